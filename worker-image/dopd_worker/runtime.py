"""Worker options and the loaded pieces (model, paged cache) both roles and `dopd profile` start from.

Device and dtype selection lives here, explicit: `auto` is CUDA when a GPU is visible, else CPU; the
dtype is bf16 on GPUs that support it (fp16 otherwise) and fp32 on CPU. The KV pair transport that
follows from the device is chosen in `transfer.select_transport`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dopd_worker.config import PRESETS, ModelConfig, load_model_config
from dopd_worker.kv_cache import PagedKVCache
from dopd_worker.model import LlamaForCausalLM, build_model


@dataclass(frozen=True)
class WorkerOptions:
    role: str
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    kv_host: str = "127.0.0.1"
    kv_port: int = 29600
    device: str = "auto"
    dtype: str = "auto"
    block_size: int = 16
    kv_cache_tokens: int | None = None
    kv_memory_fraction: float = 0.85
    token_budget: int = 4096
    max_batch_size: int = 64
    # Decode: the TPOT SLO that orders sequences waiting for room in the batch (`join_order`: timely
    # ones first); None: first come, first served. The operator sets it from spec.slo.tpotSeconds.
    tpot_slo_seconds: float | None = None
    max_model_len: int | None = None
    transfer_timeout_seconds: float = 30.0
    seed: int = 0
    served_model_name: str | None = None
    # Seconds a draining worker (SIGTERM or POST /drain) gets before what is left ends with an error;
    # the operator sets it from spec.<role>.drainSeconds (whose default it matches). None: no limit.
    drain_timeout_seconds: float | None = 120.0
    fault_exit_during_transfer: int | None = None  # scale-event tests: exit at the N-th first layer received
    fault_pause_during_transfer: int | None = None  # chaos tests: hold the N-th transfer after layer 0
    ordered_transfers: bool = False  # force NCCL's in-order transfer protocol on any backend (tests)
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return self.model if self.model in PRESETS else Path(self.model).name


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device is visible")
    return device


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if spec != "auto":
        if spec not in names:
            raise ValueError(f"--dtype {spec!r}: use auto, {', '.join(sorted(names))}")
        return names[spec]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def kv_cache_blocks(
    config: ModelConfig, options: WorkerOptions, dtype: torch.dtype, device: torch.device
) -> int:
    """Blocks of the paged cache: from --kv-cache-tokens, else a fraction of free GPU memory, else 32k tokens."""
    if options.kv_cache_tokens is not None:
        tokens = options.kv_cache_tokens
    elif device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        per_token = config.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size())
        tokens = int(free_bytes * options.kv_memory_fraction) // per_token
    else:
        tokens = 32768
    blocks = max(1, tokens // options.block_size)
    return blocks


@dataclass
class LoadedModel:
    config: ModelConfig
    model: LlamaForCausalLM
    cache: PagedKVCache
    device: torch.device
    dtype: torch.dtype
    max_model_len: int


def load(options: WorkerOptions) -> LoadedModel:
    config = load_model_config(options.model)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    checkpoint = None if options.model in PRESETS else Path(options.model)
    model = build_model(config, dtype, device, checkpoint, seed=options.seed)
    cache = PagedKVCache(
        config, kv_cache_blocks(config, options, dtype, device), options.block_size, dtype, device
    )
    max_len = min(options.max_model_len or config.max_position_embeddings, config.max_position_embeddings)
    return LoadedModel(config, model, cache, device, dtype, max_len)
