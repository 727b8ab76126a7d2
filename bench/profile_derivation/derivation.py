"""What every source module shares: units, serving defaults, model shapes and their KV arithmetic.

Also the `Derivation` record of one preset and the two latency forms a preset is evaluated with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dopd_operator.api import DecodeCoefficients, PrefillCoefficients
from dopd_operator.profile_fit import FitQuality

MS = 1e-3
NS = 1e-9
GPU_MEMORY_BYTES = 80e9  # "80 GB" cards, decimal: conservative (A100/H100 80GB expose ~79.2-80 GiB)
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
MAX_BATCH_SIZE = 256  # vLLM's default --max-num-seqs
KV_LINK_BYTES_PER_SECOND = 25e9  # the API default: one ~200 Gb/s RDMA/NVLink-class path per GPU


# --------------------------------------------------------------------------------------------------------
# Model arithmetic: weights and KV bytes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What KV capacity and KV transfer size depend on."""

    params: float  # total parameters (bf16/fp16: 2 bytes each)
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, fp16: 2 * layers * kv_heads * head_dim * 2 bytes (whole replica)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


OPT_13B = ModelShape(params=12.85e9, layers=40, kv_heads=40, head_dim=128)  # hidden 5120, MHA
OPT_66B = ModelShape(params=65.7e9, layers=64, kv_heads=72, head_dim=128)  # hidden 9216, MHA
LLAMA2_70B = ModelShape(params=68.98e9, layers=80, kv_heads=8, head_dim=128)  # GQA 64q/8kv
LLAMA3_8B = ModelShape(params=8.03e9, layers=32, kv_heads=8, head_dim=128)  # GQA 32q/8kv


def kv_capacity_tokens(shape: ModelShape, gpus: int) -> int:
    """(gpus x 80 GB x 0.9 - weights) / KV bytes per token: the replica's KV pool, all TP ranks together."""
    free = gpus * GPU_MEMORY_BYTES * GPU_MEMORY_UTILIZATION - shape.weight_bytes
    if free <= 0:
        raise ValueError(f"weights ({shape.weight_bytes / 1e9:.0f} GB) do not fit on {gpus} GPU(s)")
    return int(free // shape.kv_bytes_per_token)


# --------------------------------------------------------------------------------------------------------
# Derivation record
# --------------------------------------------------------------------------------------------------------


@dataclass
class Derivation:
    """One preset: coefficients, how they were obtained, and their error against the source points."""

    name: str
    description: str
    source: str
    method: str
    prefill: PrefillCoefficients
    decode: DecodeCoefficients
    kv_capacity_tokens: int
    kv_bytes_per_token: int
    max_batch_size: int = MAX_BATCH_SIZE
    kv_transfer_bytes_per_second: float = KV_LINK_BYTES_PER_SECOND
    prefill_quality: FitQuality | None = None
    decode_quality: FitQuality | None = None
    # (label, source seconds, model seconds) for the tables in docs/profiles.md
    prefill_points: list[tuple[str, float, float]] = field(default_factory=list)
    decode_points: list[tuple[str, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_tables: list[str] = field(default_factory=list)
