"""Model configuration: Llama-architecture shapes from a Hugging Face config.json or a named preset.

Used by the model builder (`model.py`), the paged KV cache (sizing) and `dopd profile`. Presets are
random-initialized shapes: `tiny` and `small` for tests and the demo, real shapes such as `llama3-8b` for
memory and speed measurements on a GPU. Pure: reads a file only in `load_model_config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and constants of a Llama-architecture decoder (field names follow HF's LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    rope_scaling: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def parameter_count(self) -> int:
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * per_layer + h + head


# Byte-level tokenizer ids: 0..255 bytes, then BOS and EOS; presets' vocab covers them.
BYTE_BOS_ID = 256
BYTE_EOS_ID = 257

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=BYTE_BOS_ID,
        eos_token_ids=(BYTE_EOS_ID,),
    ),
    "small": ModelConfig(
        vocab_size=320,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=BYTE_BOS_ID,
        eos_token_ids=(BYTE_EOS_ID,),
    ),
    "llama3-8b": ModelConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_ids=(128001, 128009),
    ),
}


def _eos_ids(raw: Any) -> tuple[int, ...]:
    if raw is None:
        return ()
    if isinstance(raw, int):
        return (raw,)
    return tuple(int(x) for x in raw)


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from the dict of a Hugging Face Llama config.json; rejects other architectures."""
    archs = raw.get("architectures") or ["LlamaForCausalLM"]
    model_type = raw.get("model_type", "llama")
    if model_type not in ("llama", "mistral") and "LlamaForCausalLM" not in archs:
        raise ValueError(
            f"unsupported model_type {model_type!r} / architectures {archs}: only Llama-architecture"
        )
    scaling = raw.get("rope_scaling")
    rope_scaling = None
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in (None, "default", "llama3"):
            raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, llama3")
        if kind == "llama3":
            rope_scaling = tuple(
                sorted((k, float(v)) for k, v in scaling.items() if isinstance(v, int | float))
            )
    heads = int(raw["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw.get("eos_token_id")),
        rope_scaling=rope_scaling,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The config.json dict for a ModelConfig (used by tests that write their own checkpoint)."""
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_ids),
    }
    if config.rope_scaling is not None:
        out["rope_scaling"] = {"rope_type": "llama3", **dict(config.rope_scaling)}
    return out


def load_model_config(model: str) -> ModelConfig:
    """A preset by name, or the config.json of a local model directory (never a hub download)."""
    if model in PRESETS:
        return PRESETS[model]
    path = Path(model)
    config_file = path / "config.json"
    if not config_file.is_file():
        known = ", ".join(sorted(PRESETS))
        raise ValueError(
            f"model {model!r} is neither a preset ({known}) nor a local directory with config.json"
        )
    return config_from_hf(json.loads(config_file.read_text()))


def with_max_positions(config: ModelConfig, max_positions: int) -> ModelConfig:
    return replace(config, max_position_embeddings=max_positions)
