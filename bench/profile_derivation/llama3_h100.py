"""Llama-3-8B on H100 TP1: LLMServingSim per-layer latencies + Vidur per-op + a bandwidth model.

The preset `llama3-8b-h100`.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from dopd_operator.profile_fit import fit_decode, fit_prefill
from profile_derivation.derivation import (
    LLAMA3_8B,
    MS,
    NS,
    Derivation,
    kv_capacity_tokens,
)

LLMSERVINGSIM_CSV = "llmservingsim/profiler/v0/perf_models/H100/meta-llama/Llama-3.1-8B/tp1/layers.csv"
VIDUR_H100_7B_CSV = "vidur/data/profiling/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
VIDUR_A100_L3_8B_CSV = "vidur/data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"

L3_HIDDEN = 4096
L3_KV_DIM = 1024  # 8 kv heads x 128
L3_FFN = 14336
L3_VOCAB = 128256
L3_LAYERS = 32
GEMM_OPS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Weight bytes (bf16) each GEMM reads, per layer.
L3_GEMM_BYTES = {
    "q_proj": 2 * L3_HIDDEN * L3_HIDDEN,
    "k_proj": 2 * L3_HIDDEN * L3_KV_DIM,
    "v_proj": 2 * L3_HIDDEN * L3_KV_DIM,
    "o_proj": 2 * L3_HIDDEN * L3_HIDDEN,
    "gate_proj": 2 * L3_HIDDEN * L3_FFN,
    "up_proj": 2 * L3_HIDDEN * L3_FFN,
    "down_proj": 2 * L3_FFN * L3_HIDDEN,
}
L3_LM_HEAD_BYTES = 2 * L3_VOCAB * L3_HIDDEN
L3_PREFILL_FIT_LENGTHS = tuple(range(16, 2049))  # prompts below 16 tokens are not a prefill workload
L3_DECODE_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
L3_DECODE_CTX = (128, 256, 512, 1024, 2048, 4096, 8192)
# Vidur columns for the non-GEMM per-layer ops (CUDA-event kernel times, sarathi-serve kernels).
VIDUR_NON_GEMM = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")


def _llmservingsim(data: Path) -> dict[str, dict[int, float]]:
    """layer_name -> input tokens -> seconds (kv_cache = 0, TP1)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with (data / LLMSERVINGSIM_CSV).open(newline="") as f:
        for r in csv.DictReader(f):
            if int(r["kv_cache"]) == 0 and int(r["tp_size"]) == 1:
                out[r["layer_name"]][int(r["input"])] = float(r["latency(ns)"]) * NS
    return out


def _vidur(data: Path, rel: str) -> dict[int, dict[str, float]]:
    """num_tokens -> op -> median seconds, TP1."""
    out: dict[int, dict[str, float]] = {}
    with (data / rel).open(newline="") as f:
        for r in csv.DictReader(f):
            if int(r["num_tensor_parallel_workers"]) == 1:
                ops = {k.split(".")[1]: float(v) * MS for k, v in r.items() if k.endswith(".median")}
                out[int(r["num_tokens"])] = ops
    return out


def llama3_prefill_seconds(ops: dict[str, dict[int, float]], tokens: int) -> float:
    """One prompt of `tokens` tokens: 32 x (sum of the per-layer ops) + embedding + final norm + lm_head(1).

    lm_head is taken at 1 token: vLLM/SGLang compute logits only for each prompt's last position, whereas
    LLMServingSim's lm_head row is for all `tokens` positions (2.9 ms at 2048, which would inflate c).
    """
    per_layer = sum(
        ops[name][tokens] for name in ops if name not in ("embedding", "final_layernorm", "lm_head")
    )
    return (
        L3_LAYERS * per_layer + ops["embedding"][tokens] + ops["final_layernorm"][tokens] + ops["lm_head"][1]
    )


def derive_llama3_8b_h100(data: Path) -> Derivation:
    """Llama-3-8B, H100, TP1. Prefill from LLMServingSim layer sums; decode from a bandwidth + per-op model.

    Llama-3.1-8B (LLMServingSim's model) and Llama-3-8B have identical shapes (32 layers, 4096 hidden,
    GQA 32/8, FFN 14336, vocab 128256); only the RoPE scaling differs, so per-op times carry over.

    Decode step for B sequences of context ctx_i (1 new token each), per component:
    - GEMMs (q,k,v,o,gate,up,down x 32 + lm_head) at B tokens: LLMServingSim's measured times at input = B.
      At B = 1 these are memory bound; their weight bytes / time gives the effective HBM bandwidth BW_eff.
    - Non-GEMM per-layer ops (2 RMSNorms, RoPE, SiLU*mul, residual add) at B tokens: Vidur's H100 kernel
      times for Llama-2-7B (same hidden size 4096). LLMServingSim's rows for these ops are ~4x Vidur's at
      small B (wall-clock, eager launch overhead), which a CUDA-graph decode step does not pay.
    - Attention: reads every context token's K and V once per step: sum(ctx) x 131072 B / BW_eff, plus a
      fixed per-layer kernel cost, LLMServingSim's attn row at 1 token (kv_cache = 0).
    The step times are summed on a grid of B x ctx and refit with `fit_decode`; the doc cross-checks the
    pure weight-streaming estimate (weight bytes / BW_eff) against the per-op sums of both sources.
    Engine/scheduler CPU time per step is not included (GPU time only).
    """
    ops = _llmservingsim(data)
    vid = _vidur(data, VIDUR_H100_7B_CSV)
    vid_a100 = _vidur(data, VIDUR_A100_L3_8B_CSV)

    # --- prefill
    pre_lengths = list(L3_PREFILL_FIT_LENGTHS)
    pre_secs = [llama3_prefill_seconds(ops, n) for n in pre_lengths]
    prefill, pq = fit_prefill([[float(n)] for n in pre_lengths], pre_secs)
    all_pct = [
        abs(prefill.batch_seconds([float(n)]) - llama3_prefill_seconds(ops, n))
        / llama3_prefill_seconds(ops, n)
        for n in range(1, 2049)
    ]

    worst_lengths = sorted(sorted(range(1, 2049), key=lambda n: all_pct[n - 1])[-3:])

    # --- decode
    gemm_bytes_1 = L3_LAYERS * sum(L3_GEMM_BYTES.values()) + L3_LM_HEAD_BYTES
    gemm_time_1 = L3_LAYERS * sum(ops[g][1] for g in GEMM_OPS) + ops["lm_head"][1]
    bw_eff = gemm_bytes_1 / gemm_time_1
    attn_fixed = L3_LAYERS * ops["attn"][1]
    kv_bytes = LLAMA3_8B.kv_bytes_per_token

    def non_attention(batch: int) -> float:
        gemm = L3_LAYERS * sum(ops[g][batch] for g in GEMM_OPS) + ops["lm_head"][batch]
        non_gemm = L3_LAYERS * sum(vid[batch][o] for o in VIDUR_NON_GEMM) + vid[batch]["emb"]
        return gemm + non_gemm

    def step(batch: int, ctx_per_seq: int) -> float:
        return non_attention(batch) + attn_fixed + batch * ctx_per_seq * kv_bytes / bw_eff

    cap = kv_capacity_tokens(LLAMA3_8B, 1)
    grid = [(b, c) for b in L3_DECODE_BATCHES for c in L3_DECODE_CTX if b * c <= cap]
    dec_secs = [step(b, c) for b, c in grid]
    decode, dq = fit_decode([float(b) for b, _ in grid], [float(b * c) for b, c in grid], dec_secs)

    # --- cross-check table (small token counts)
    vid_gemm_ops = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
    l2_7b_layer_bytes = 2 * 4096 * (3 * 4096) + 2 * 4096 * 4096 + 2 * 4096 * 2 * 11008 + 2 * 11008 * 4096
    cross = [
        "| tokens | weight-streaming estimate (ms) | LLMServingSim GEMMs x32 + lm_head (ms) | "
        "Vidur H100 Llama-2-7B GEMMs x32 scaled to Llama-3-8B bytes, + lm_head at BW_eff (ms) | "
        "Vidur A100 Llama-3-8B GEMMs x32, no lm_head (ms) | LLMServingSim non-GEMM ops x32 (ms) | "
        "Vidur H100 non-GEMM ops x32 (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    layer_bytes = sum(L3_GEMM_BYTES.values())
    lm_head_stream = L3_LM_HEAD_BYTES / bw_eff  # Vidur profiles no lm_head: add it at BW_eff
    for t in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        stream = gemm_bytes_1 / bw_eff
        lss = L3_LAYERS * sum(ops[g][t] for g in GEMM_OPS) + ops["lm_head"][t]
        v7 = (
            L3_LAYERS * sum(vid[t][o] for o in vid_gemm_ops) * layer_bytes / l2_7b_layer_bytes
            + lm_head_stream
        )
        va = L3_LAYERS * sum(vid_a100[t][o] for o in vid_gemm_ops)
        lss_ng = L3_LAYERS * sum(ops[o][t] for o in ("input_layernorm", "post_layernorm", "rope", "act_fn"))
        v_ng = L3_LAYERS * sum(vid[t][o] for o in VIDUR_NON_GEMM)
        cross.append(
            f"| {t} | {stream / MS:.2f} | {lss / MS:.2f} | {v7 / MS:.2f} | {va / MS:.2f} | "
            f"{lss_ng / MS:.2f} | {v_ng / MS:.2f} |"
        )

    a100_bw = L3_LAYERS * layer_bytes / (L3_LAYERS * sum(vid_a100[1][o] for o in vid_gemm_ops))
    v7_1 = L3_LAYERS * sum(vid[1][o] for o in vid_gemm_ops) * layer_bytes / l2_7b_layer_bytes + lm_head_stream
    cross_notes = (
        "Independent checks at 1 token: Vidur's H100 Llama-2-7B GEMMs scaled by weight bytes give "
        f"{v7_1 / MS:.2f} ms vs {gemm_time_1 / MS:.2f} ms from LLMServingSim "
        f"({v7_1 / gemm_time_1 - 1:+.0%}); "
        f"Vidur's A100 Llama-3-8B GEMMs imply {a100_bw / 1e12:.2f} TB/s, {a100_bw / 2.039e12:.0%} of the "
        f"A100-80GB's 2.04 TB/s, the same efficiency as the H100 calibration ({bw_eff / 3.35e12:.0%}). "
        "The GEMMs stay within ~10% of the weight-streaming time up to 64 tokens and are ~25% above it at "
        "256 (the compute-bound transition): the fitted c carries that growth. Vidur's non-GEMM kernels are "
        "~0.6 ms per step vs LLMServingSim's 2-4 ms of eager launch time; the decode model uses Vidur's."
    )

    return Derivation(
        name="llama3-8b-h100",
        description=(
            "Llama-3-8B, 1x H100-80GB, TP1. Prefill fitted to LLMServingSim's per-layer H100 latencies "
            f"(mean {pq.mean_abs_pct_error:.1%} error, 16..2048 tokens); decode from a HBM-bandwidth model "
            f"(BW_eff {bw_eff / 1e12:.2f} TB/s calibrated on LLMServingSim GEMMs) plus Vidur per-op times."
        ),
        source=(
            f"LLMServingSim `{LLMSERVINGSIM_CSV}` (measured per-layer ns, 1..2048 tokens); Vidur "
            f"`{VIDUR_H100_7B_CSV}` (non-GEMM kernel times); architecture arithmetic"
        ),
        method=(
            "Prefill: T(l) = 32 x sum(per-layer ops at l tokens, attention with kv_cache=0) + embedding(l) + "
            f"final_layernorm(l) + lm_head(1 token); `fit_prefill` on l = {L3_PREFILL_FIT_LENGTHS[0]}..."
            f"{L3_PREFILL_FIT_LENGTHS[-1]} (every integer). Decode: T(B, ctx) = LLMServingSim GEMMs at B "
            "tokens "
            "x 32 + lm_head(B) + Vidur H100 non-GEMM ops at B tokens x 32 + embedding + 32 x attn(1 token) + "
            f"sum(ctx) x {kv_bytes} B / BW_eff, on B in {list(L3_DECODE_BATCHES)} x ctx/seq in "
            f"{list(L3_DECODE_CTX)} with B x ctx <= KV capacity ({len(grid)} points); `fit_decode`."
        ),
        prefill=prefill,
        decode=decode,
        kv_capacity_tokens=cap,
        kv_bytes_per_token=kv_bytes,
        prefill_quality=pq,
        decode_quality=dq,
        prefill_points=[
            (f"l={n}", llama3_prefill_seconds(ops, n), prefill.batch_seconds([float(n)]))
            for n in (1, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048)
        ],
        decode_points=[
            (f"B={b}, ctx/seq={c}", step(b, c), decode.step_seconds(b, b * c))
            for b, c in grid
            if b in (1, 8, 32, 64, 128, 256) and c in (256, 1024, 4096)
        ],
        notes=[
            f"Effective HBM bandwidth BW_eff = {gemm_bytes_1 / 1e9:.2f} GB of GEMM + lm_head weights / "
            f"{gemm_time_1 / MS:.2f} ms (LLMServingSim, 1 token) = {bw_eff / 1e12:.2f} TB/s "
            f"({bw_eff / 3.35e12:.0%} of H100 SXM's 3.35 TB/s); the same BW_eff prices the KV reads "
            f"({kv_bytes} B per context token: 2 x 32 layers x 8 kv heads x 128 x 2 B), i.e. "
            f"{kv_bytes / bw_eff * 1e9:.1f} ns per context token.",
            f"Prefill error against all 2048 LLMServingSim points (1..2048 tokens): mean "
            f"{statistics.fmean(all_pct):.2%}, max {max(all_pct):.2%}. The worst points are l = "
            + ", ".join(str(n) for n in worst_lengths)
            + " (single noisy source points and the memory- to compute-bound knee near 256 tokens); short "
            "prompts (16-64 tokens) are under-predicted by up to ~9%.",
            f"Beyond the data (prompts > 2048 tokens) the convex fit over-predicts: it gives "
            f"{prefill.batch_seconds([8192.0]) * 1e3:.0f} ms for 8192 tokens, while at 2048 tokens the "
            "forward "
            "already runs the layer GEMMs at ~460 TFLOP/s, so a compute-bound extrapolation (4 x T(2048) "
            "plus "
            "the extra quadratic attention, 32 x 177 us x (16 - 4)) is ~320 ms. Conservative "
            "(over-provisions "
            "prefill) for long-prompt workloads.",
            "Prefill includes LLMServingSim's eager per-op overhead (~2 ms per forward across 32 layers of "
            "norm/rope launches); it is in `a` and slightly conservative for CUDA-graph or fused engines.",
            "Decode excludes engine CPU time per step (scheduling, sampling bookkeeping); expect a real vLLM "
            "step to be ~0.5-2 ms slower. The planner's online correction factor absorbs this; for "
            "production, measure with `dopd profile`.",
            "Llama-3.1-8B (LLMServingSim) has the same shapes as Llama-3-8B; Vidur's Llama-2-7B non-GEMM ops "
            "share the hidden size (4096); SiLU*mul is sized by FFN 11008 there vs 14336 (under 1 us/layer).",
        ],
        extra_tables=[
            "Cross-check of the decode model at small token counts (one forward's non-attention work; "
            "'weight-streaming' = GEMM+lm_head weight bytes / BW_eff, independent of tokens while memory "
            "bound):",
            "\n".join(cross),
            cross_notes,
        ],
    )
