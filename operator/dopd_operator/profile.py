"""Per-replica performance profiles: DistServe's latency model, named presets, and resolution of a spec.

A profile answers two questions for the planner and the simulator, in seconds:
- how long one prefill batch of prompts takes: `a + b*sum(l) + c*sum(l^2)` (convex in prompt length),
- how long one decode step of B sequences with contexts ctx_i takes: `a + b*sum(ctx) + c*B`,
plus the KV capacity of one decode replica in tokens and the KV bytes per token (for transfer time).

Presets and their derivations live in `profile_presets.py` (docs/profiles.md has the derivations and
their error against the source points); the least-squares fitter that turns measured samples into
coefficients lives in `profile_fit.py`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from dopd_operator.api import InlineProfile, ProfileSpec
from dopd_operator.errors import SpecError

# Most prompt tokens one prefill iteration computes: vLLM's `max_num_batched_tokens` and SGLang's
# `chunked_prefill_size` default to 8192 on 80 GB GPUs. Prompts are batched under it (the per-batch fixed
# cost `a` is shared) and a longer prompt is computed in chunks of it (each chunk pays `a`). The capacity
# model and the simulated prefill replica both read this one value.
PREFILL_TOKEN_BUDGET_TOKENS = 8192


class PerformanceProfile(InlineProfile):
    """A named, documented per-replica profile."""

    name: str = Field(..., description="Preset name.")
    description: str = Field("", description="Model, GPU, parallelism and where the numbers come from.")

    def prefill_batch_seconds(self, prompt_tokens: Sequence[float]) -> float:
        """Seconds to prefill one batch of prompts of the given lengths."""
        if not prompt_tokens:
            return 0.0
        return self.prefill.batch_seconds(prompt_tokens)

    def prefill_seconds(self, prompt_tokens: float) -> float:
        """Seconds to prefill a single prompt alone."""
        p = self.prefill
        return p.a_seconds + p.b_seconds_per_token * prompt_tokens + p.c_seconds_per_token2 * prompt_tokens**2

    def decode_step_seconds(self, batch_size: float, mean_context_tokens: float) -> float:
        """Seconds for one decode step of `batch_size` sequences of mean context `mean_context_tokens`."""
        return self.decode.step_seconds(batch_size, batch_size * mean_context_tokens)

    @property
    def kv_transfer_seconds_per_token(self) -> float:
        """Seconds to ship one token's KV cache from prefill to decode."""
        return self.kv_bytes_per_token / self.kv_transfer_bytes_per_second

    def kv_transfer_seconds(self, prompt_tokens: float) -> float:
        """Seconds to ship one prompt's KV cache from prefill to decode."""
        return prompt_tokens * self.kv_transfer_seconds_per_token

    def scaled(self, prefill_factor: float, decode_factor: float) -> PerformanceProfile:
        """The profile with prefill and decode times multiplied by online correction factors."""
        p, d = self.prefill, self.decode
        return self.model_copy(
            update={
                "prefill": p.model_copy(
                    update={
                        "a_seconds": p.a_seconds * prefill_factor,
                        "b_seconds_per_token": p.b_seconds_per_token * prefill_factor,
                        "c_seconds_per_token2": p.c_seconds_per_token2 * prefill_factor,
                    }
                ),
                "decode": d.model_copy(
                    update={
                        "a_seconds": d.a_seconds * decode_factor,
                        "b_seconds_per_context_token": d.b_seconds_per_context_token * decode_factor,
                        "c_seconds_per_sequence": d.c_seconds_per_sequence * decode_factor,
                    }
                ),
            }
        )


def resolve_profile(spec: ProfileSpec) -> PerformanceProfile:
    """The profile a spec names, or a SpecError that lists the presets."""
    from dopd_operator.profile_presets import PRESETS

    if spec.inline is not None:
        return PerformanceProfile(
            name="inline", description="given inline in the spec", **spec.inline.model_dump()
        )
    assert spec.preset is not None
    try:
        return PRESETS[spec.preset]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise SpecError(
            "spec.profile.preset",
            f"unknown profile preset {spec.preset!r}; use one of: {known}, or give spec.profile.inline",
        ) from None
