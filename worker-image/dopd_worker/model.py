"""A Llama-architecture decoder in plain torch, with attention over a paged KV cache.

Callers: the prefill and decode engines (`engine.py`), `dopd profile` and the correctness test's
single-process reference (`dense_logits`). Module and parameter names match Hugging Face's
LlamaForCausalLM, so a local HF directory's *.safetensors load as is. RMSNorm, rotary embeddings (with
Llama 3 frequency scaling), grouped-query attention, SwiGLU.

One forward serves both roles: a batch is a set of sequences, each contributing its new tokens (a
whole prompt in prefill, one token in decode). New K/V are written into the paged cache first, then
each sequence attends over its context gathered from its blocks, padded to the longest in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from dopd_worker.config import ModelConfig


@dataclass
class AttentionBatch:
    """Index tensors for one forward over a batch of sequences (built by `kv_cache.build_batch`)."""

    input_ids: torch.Tensor  # [T] new tokens of all sequences, concatenated
    positions: torch.Tensor  # [T] absolute position of each new token
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) each new token's K/V goes to
    query_index: torch.Tensor  # [B, Q] index into T of each sequence's new tokens (padding: 0)
    query_valid: torch.Tensor  # [B, Q] bool
    context_slots: torch.Tensor  # [B, C] cache slots of each sequence's whole context (padding: 0)
    attn_mask: torch.Tensor  # [B, 1, Q, C] bool, True where a query may attend a key
    last_index: torch.Tensor  # [B] index into T of each sequence's last new token


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies, with Llama 3's smooth low/high-frequency scaling when configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if config.rope_scaling is None:
        return inv_freq.float()
    s = dict(config.rope_scaling)
    factor, low, high = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s.get("original_max_position_embeddings", 8192.0)
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_len / low, old_len / high
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, heads, head_dim]; cos/sin: [..., T, 1, head_dim]."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        q = self.q_proj(x).view(*lead, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(*lead, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(*lead, self.n_kv, self.head_dim)
        return q, k, v

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """q: [B, Q, H, D], k/v: [B, C, KV, D] -> [B, Q, H*D]."""
        groups = self.n_heads // self.n_kv
        qt = q.transpose(1, 2)
        kt = k.transpose(1, 2).repeat_interleave(groups, dim=1)
        vt = v.transpose(1, 2).repeat_interleave(groups, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], self.n_heads * self.head_dim)

    def forward_paged(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        q, k, v = self._qkv(x)  # [T, heads, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_flat = k_cache.view(-1, self.n_kv, self.head_dim)
        v_flat = v_cache.view(-1, self.n_kv, self.head_dim)
        k_flat.index_copy_(0, batch.slot_mapping, k)
        v_flat.index_copy_(0, batch.slot_mapping, v)
        keys = k_flat[batch.context_slots]  # [B, C, KV, D]
        values = v_flat[batch.context_slots]
        queries = q[batch.query_index]  # [B, Q, H, D]
        out = self._attend(queries, keys, values, batch.attn_mask)
        return cast(torch.Tensor, self.o_proj(out[batch.query_valid]))  # back to [T, hidden] in flat order

    def forward_dense(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)  # [1, L, heads, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return cast(torch.Tensor, self.o_proj(self._attend(q, k, v, None)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder plus LM head; `forward_paged` for the engines, `dense_logits` as a cache-free reference."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def _layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.model.layers if isinstance(layer, DecoderLayer)]

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = positions.float()[..., None] * inv_freq  # [..., T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # [..., T, 1, D]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return F.linear(hidden, self.model.embed_tokens.weight).float()
        return cast(torch.Tensor, self.lm_head(hidden)).float()

    @torch.inference_mode()
    def forward_paged(
        self,
        batch: AttentionBatch,
        k_caches: list[torch.Tensor],
        v_caches: list[torch.Tensor],
        layer_done: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Logits [B, vocab] (fp32) at each sequence's last new token; writes the new tokens' K/V.

        `layer_done(i)` runs once layer i's K/V are in the cache: the prefill engine ships that layer
        while the next one computes.
        """
        x = self.model.embed_tokens(batch.input_ids)
        cos, sin = self._cos_sin(batch.positions, x.dtype)
        for i, layer in enumerate(self._layers()):
            x = x + layer.self_attn.forward_paged(
                layer.input_layernorm(x), cos, sin, batch, k_caches[i], v_caches[i]
            )
            if layer_done is not None:
                layer_done(i)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(self.model.norm(x[batch.last_index]))

    @torch.inference_mode()
    def dense_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [L, vocab] for a whole sequence with plain causal attention and no cache."""
        ids = torch.tensor([token_ids], device=self.model.embed_tokens.weight.device)
        x = self.model.embed_tokens(ids)
        positions = torch.arange(len(token_ids), device=ids.device)[None, :]
        cos, sin = self._cos_sin(positions, x.dtype)
        for layer in self._layers():
            x = x + layer.self_attn.forward_dense(layer.input_layernorm(x), cos, sin)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(self.model.norm(x))[0]


def greedy_reference(
    model: LlamaForCausalLM, prompt_ids: list[int], max_tokens: int, stop_ids: tuple[int, ...] = ()
) -> list[int]:
    """Single-process greedy generation by full recomputation: the correctness test's ground truth."""
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(model.dense_logits(ids)[-1].argmax())
        out.append(token)
        ids.append(token)
        if token in stop_ids:
            break
    return out


def _init_random(model: LlamaForCausalLM, seed: int, device: torch.device) -> None:
    """Deterministic init given the seed: every worker of a preset builds the same weights."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif "embed_tokens" in name:
                param.normal_(0.0, 1.0, generator=gen)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]), generator=gen)


def build_model(
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    seed: int = 0,
) -> LlamaForCausalLM:
    """The model with weights from a local HF directory's *.safetensors, or random (seeded) when None."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)  # storage comes in the target dtype: no fp32 copy of 8B
    model = model.to_empty(device=device)
    if checkpoint_dir is None:
        _init_random(model, seed, device)
    else:
        load_safetensors(model, checkpoint_dir)
    model.inv_freq = rope_inv_freq(config).to(device)  # fp32 always
    return model.eval()


def load_safetensors(model: LlamaForCausalLM, checkpoint_dir: Path) -> None:
    """Copy every tensor of the directory's *.safetensors into the model; any gap or extra is an error."""
    from safetensors.torch import load_file

    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {checkpoint_dir}")
    params = dict(model.named_parameters())
    seen: set[str] = set()
    with torch.no_grad():
        for file in files:
            for name, tensor in load_file(str(file)).items():
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                if name not in params:
                    raise ValueError(f"{file.name}: unexpected tensor {name!r} for a Llama model")
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ValueError(
                        f"{file.name}: {name} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor)
                seen.add(name)
    missing = set(params) - seen
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise ValueError(f"checkpoint {checkpoint_dir} lacks tensors: {sorted(missing)[:5]}")


def save_checkpoint(model: LlamaForCausalLM, out_dir: Path) -> None:
    """Write config.json + model.safetensors (tests build their own tiny checkpoint with this)."""
    import json

    from safetensors.torch import save_file

    from dopd_worker.config import config_to_hf

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out_dir / "model.safetensors"))
