"""A request that goes back to the prefill queue (a decode worker full after all, a refusal, a retry)
keeps its place: the router queues it by its arrival, not by the attempt."""

from __future__ import annotations

import asyncio
import time

from dopd_worker.metrics import create_metrics
from dopd_worker.router import Generation, Router, WorkerState
from dopd_worker.sampling import SamplingParams
from dopd_worker.scheduler import Policy, SchedulerConfig


def test_a_request_back_in_the_queue_goes_before_later_arrivals() -> None:
    async def scenario() -> list[str]:
        router = Router(SchedulerConfig(policy=Policy.FIFO), create_metrics("router", "m"), max_retries=0)
        now = time.monotonic()
        # 3,000-token prompts under a 4,096-token budget: the one prefill worker takes one at a time
        earlier = Generation([1] * 3000, SamplingParams(), request_id="earlier", arrival_seconds=now - 5.0)
        later = Generation([1] * 3000, SamplingParams(), request_id="later", arrival_seconds=now - 1.0)
        order: list[str] = []

        async def attempt(gen: Generation) -> None:
            state = await router._acquire_prefill(gen)
            order.append(gen.request_id)
            await asyncio.sleep(0.01)
            router._release_prefill(gen, state)

        later_task = asyncio.create_task(attempt(later))  # queued first
        await asyncio.sleep(0)
        earlier_task = asyncio.create_task(attempt(earlier))  # back for its second prefill
        await asyncio.sleep(0)
        router.workers["http://p"] = WorkerState("http://p", "prefill", healthy=True)
        router.dispatch()
        await asyncio.wait_for(asyncio.gather(later_task, earlier_task), 10)
        await router.close()
        return order

    assert asyncio.run(scenario()) == ["earlier", "later"]
