"""The simulator's prefill queue: the router's own scheduler (`dopd_worker.scheduler`) over trace indices.

The simulator does not schedule prompts itself. `cluster.Simulator` pushes each arriving request here and
asks, as the router's dispatch loop does, for the next (request, prefill worker) pair until there is none;
the simulated prefill replicas are the workers (`instances.PrefillInstance` carries the fields the policy
reads). Length-aware (DOPD's shortest-prompt-first with the aging bound and the long-prompt rule) or
FIFO, with the simulator's aging bound (`SimConfig.starvation_seconds`), token budget
(`SimConfig.prefill_token_budget`, the prefill replica's own) and dispatch deadline (length-aware
only). Callers: `cluster.Simulator`, `stepping`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dopd_sim.config import QueuePolicy, SimConfig
from dopd_worker.scheduler import Policy, QueuedPrompt, SchedulerConfig, WorkerLoad
from dopd_worker.scheduler import PrefillQueue as RouterQueue


def scheduler_config(config: SimConfig, policy: QueuePolicy) -> SchedulerConfig:
    """The router's scheduler configured as the simulated engine: its policy, aging bound and budget. A
    prompt counts as long (kept off one replica, so short prompts always find room) when it would take
    more than half a batch: the router's own default of 1024 tokens is sized for the CPU worker's
    4096-token budget and would call half of the Azure conversation prompts long on an 8192-token
    engine, queueing them on all but one replica for nothing. The dispatch deadline is the router's
    without admission (`--dispatch-deadline-seconds`, `SimConfig.dispatch_deadline_share` of the TTFT SLO);
    with admission on, the queue deadline expires such prompts instead, as in the router."""
    share = config.dispatch_deadline_share
    late_seconds = (
        None if config.admission is not None or share is None else share * config.spec.slo.ttft_seconds
    )
    return SchedulerConfig(
        policy=Policy(policy),
        aging_seconds=config.starvation_seconds,
        long_prompt_tokens=max(config.prefill_token_budget // 2, 1),
        token_budget=config.prefill_token_budget,
        late_seconds=late_seconds,
    )


class PrefillQueue:
    """Requests waiting for a prefill worker, by index into the trace."""

    def __init__(self, config: SchedulerConfig, input_tokens: list[int]) -> None:
        self.config = config
        self.input_tokens = input_tokens  # shared with the simulator (which may extend it)
        self._router = RouterQueue(config)

    def __len__(self) -> int:
        return len(self._router)

    def grow(self, requests: int) -> None:
        """Called by `stepping.SteppedSimulator` when it appends requests. The queue keeps nothing sized
        by the number of requests (prompt lengths are read from the shared list at push), so it is a
        no-op."""

    def push(self, request: int, now_s: float) -> None:
        self._router.push(QueuedPrompt(str(request), self.input_tokens[request], now_s))

    def is_long(self, prompt_tokens: int) -> bool:
        return self._router.is_long(prompt_tokens)

    def next_assignment(self, now_s: float, workers: Sequence[WorkerLoad]) -> tuple[int, str] | None:
        """The next (request, worker name) the router's policy dispatches, or None; removes the request."""
        assignment = self._router.next_assignment(now_s, workers)
        return None if assignment is None else (int(assignment.request_id), assignment.worker)
