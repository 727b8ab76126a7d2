"""A generated multi-turn chat trace with prompt block hashes: the prefix-cache shape nobody tuned on.

Conversations start as a Poisson process. Each belongs to one of a few tenants (popularity falling as
1/rank), whose system prompt opens every one of its conversations, and runs for a geometric number of
turns: the user writes a message (log-normal length), the model answers (log-normal), and the user
writes again after a think time (exponential). A turn's prompt is the whole conversation so far, its
system prompt, every message and every answer, plus the new message; a conversation ends at its last
turn or where the next prompt would pass `max_prompt_tokens` (every prompt then fits the TTFT SLO alone
on the benchmark's engine, so the attainment target is feasible).

Prompt blocks (`block_tokens` each) are hashed as a prefix cache keys them: a block wholly inside the
tenant's system prompt is the tenant's, shared by all its conversations; every other block is the
conversation's own, the same in each later turn (a conversation only grows at its end). So a turn
finds its conversation's earlier prompt in the cache if the cache kept it through the think time, and
every conversation finds its tenant's system prompt.

Conversations start `burn_in_s` before the trace, so it opens with turns of conversations under way, as
a service that has been up for a while does (the cache, though, starts empty). Its arrivals are
clustered by conversation rather than drawn from a rate law, so the trace carries none (`Trace.law`):
the oracle sizes it as a trace read from a file. Callers: `trace_spec.generate_from_spec` (`chat`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dopd_sim.prefix_cache import MOONCAKE_BLOCK_TOKENS, PrefixTrace
from dopd_sim.synthetic import lognormal

# Block hashes: a tenant's system-prompt blocks below this, each conversation's above it.
_CONVERSATION_HASHES = 1 << 32
_BLOCKS_PER_CONVERSATION = 1 << 16


@dataclass(frozen=True)
class ChatModel:
    """The conversations' shape: tenants, turns, message and answer lengths (mean and median tokens of
    log-normals), think time."""

    tenants: int = 16
    system_tokens_mean: float = 1500.0
    system_tokens_median: float = 1200.0
    turns_mean: float = 4.0
    think_seconds_mean: float = 60.0
    message_tokens_mean: float = 400.0
    message_tokens_median: float = 250.0
    answer_tokens_mean: float = 250.0
    answer_tokens_median: float = 150.0
    answer_tokens_max: int = 2048
    max_prompt_tokens: int = 12288
    burn_in_s: float = 900.0
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.turns_mean < 1.0 or self.think_seconds_mean <= 0:
            raise ValueError("a chat model needs tenants >= 1, turns_mean >= 1 and think_seconds_mean > 0")


def conversations(
    conversations_per_s: float, duration_s: float, seed: int = 0, model: ChatModel | None = None
) -> PrefixTrace:
    """`conversations_per_s` new conversations a second over [0, duration_s) (and the burn-in before
    it); the requests are their turns arriving within [0, duration_s)."""
    if not (conversations_per_s > 0 and duration_s > 0):
        raise ValueError("conversations_per_s and duration_s must be positive")
    chat = model or ChatModel()
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, chat.tenants + 1)
    system_tokens = np.clip(
        np.rint(lognormal(rng, chat.system_tokens_mean, chat.system_tokens_median, chat.tenants)),
        1,
        chat.max_prompt_tokens // 2,
    ).astype(np.int64)
    span = duration_s + chat.burn_in_s
    starts = np.sort(rng.uniform(-chat.burn_in_s, duration_s, rng.poisson(conversations_per_s * span)))
    tenants = rng.choice(chat.tenants, size=len(starts), p=popularity / popularity.sum())
    rows: list[tuple[float, int, int, int, int]] = []  # (arrival, prompt, answer, conversation, tenant)
    for conversation, (start, tenant) in enumerate(zip(starts, tenants.tolist(), strict=True)):
        turns = int(rng.geometric(1.0 / chat.turns_mean))
        messages = np.maximum(
            np.rint(lognormal(rng, chat.message_tokens_mean, chat.message_tokens_median, turns)), 1
        )
        answers = np.clip(
            np.rint(lognormal(rng, chat.answer_tokens_mean, chat.answer_tokens_median, turns)),
            1,
            chat.answer_tokens_max,
        )
        thinks = rng.exponential(chat.think_seconds_mean, turns)
        context, arrival = int(system_tokens[tenant]), float(start)
        for message, answer, think in zip(messages, answers, thinks, strict=True):
            prompt = context + int(message)
            if prompt > chat.max_prompt_tokens or arrival >= duration_s:
                break
            if arrival >= 0.0:
                rows.append((arrival, prompt, int(answer), conversation, tenant))
            context = prompt + int(answer)
            arrival += float(think)
    if not rows:
        raise ValueError(
            "no conversation turn falls within the trace: raise conversations_per_s or duration_s"
        )
    rows.sort()
    first = rows[0][0]  # re-based to a first arrival at 0.0, as every generated trace
    block = chat.block_tokens
    blocks = tuple(
        tuple(
            tenant * _BLOCKS_PER_CONVERSATION + j
            if (j + 1) * block <= system_tokens[tenant]
            else _CONVERSATION_HASHES + conversation * _BLOCKS_PER_CONVERSATION + j
            for j in range(-(-prompt // block))
        )
        for _, prompt, _, conversation, tenant in rows
    )
    return PrefixTrace(
        np.asarray([r[0] - first for r in rows], dtype=np.float64),
        np.asarray([r[1] for r in rows], dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=np.int64),
        f"synthetic:chat,conversations_per_s={conversations_per_s:g}",
        "synthetic",
        blocks,
        block,
    )
