"""The emulator without threads or sockets: a stepped simulation of the model's engines, its engine
recorder, the replicas it follows, and the load (looped when the trace ends, if asked).

`Emulation.advance_to(t)` runs the engines to `t` seconds after start; `apply_replicas(snapshot)` adds
a ready replica for each new pod and drains the replica of each pod that left (exactly that one: it
finishes what it holds, and its series vanish when it is released); `render` and `truth` read it.
`emulator.Emulator` drives it from the wall clock; unit tests drive it with a virtual one.

Looping: copy k of the trace arrives k periods after the first, a period being the trace's span plus
one mean inter-arrival gap (so the first request of a copy does not land on the last of the previous
one). Copies are appended a minute ahead of the clock; memory grows with the requests served (the
simulator keeps every request's record), about 0.4 KB a request.
Callers: `emulator.Emulator`, tests.
"""

from __future__ import annotations

import statistics

import numpy as np

from dopd_emulator.config import EmulatorConfig, Faults, GroundTruth, PodTruth
from dopd_emulator.engines import make_recorder
from dopd_emulator.exposition import check_faults, render
from dopd_emulator.replicas import ReplicaSnapshot
from dopd_forecaster.traces import Trace
from dopd_operator.api import Role
from dopd_sim.config import SimConfig
from dopd_sim.metrics import slo_met
from dopd_sim.stepping import SteppedSimulator
from dopd_sim.workload import load_workload

LOOP_LOOKAHEAD_SECONDS = 60.0


def loop_period_seconds(trace: Trace) -> float:
    """The trace's span plus one mean inter-arrival gap (module doc)."""
    count = len(trace)
    if count < 2 or trace.duration_s <= 0:
        raise ValueError("a trace needs at least two requests at different times to be looped")
    return trace.duration_s * count / (count - 1)


class Emulation:
    """See the module docstring."""

    def __init__(self, config: EmulatorConfig, trace: Trace | None = None) -> None:
        self.config = config
        load = config.load
        self.trace = (
            trace
            if trace is not None
            else load_workload(
                load.trace, load.rate_scale, load.time_compression, load.seed, load.duration_seconds
            )
        )
        if len(self.trace) == 0:
            raise ValueError(f"the load {load.trace!r} has no requests")
        self.period_s = loop_period_seconds(self.trace) if load.at_end == "loop" else None
        self.copies = 1
        # The router's defaults: no dispatch deadline (`dopd router` has it only when told).
        sim_config = SimConfig(
            spec=config.spec,
            profile=config.profile,
            seed=load.seed,
            prefill_queue=config.queue,
            dispatch_deadline_share=None,
        )
        self.sim = SteppedSimulator(self.trace, sim_config)
        self.recorder = make_recorder(
            config.spec,
            config.namespace,
            self.sim,
            router_pod=f"{config.name}-router",
            vllm_max_model_len=config.vllm_max_model_len,
            vllm_legacy_names=config.vllm_legacy_names,
        )
        self.sim.listener = self.recorder
        self.faults = Faults()
        self._scored = 0  # requests of the completion log counted into `_met` (ttft, tpot, both) so far
        self._met = (0, 0, 0)

    def set_faults(self, faults: Faults) -> None:
        check_faults(faults, self.recorder.store)
        self.faults = faults

    def apply_replicas(self, snapshot: ReplicaSnapshot) -> None:
        """Make the replicas taking work match `snapshot`, at the current emulated time."""
        wanted = {name: "prefill" for name in snapshot.prefill} | {name: "decode" for name in snapshot.decode}
        taking_work = {n: i.role for n, i in self.sim.instances().items() if not i.draining}
        for name in sorted(taking_work):
            if wanted.get(name) != taking_work[name]:
                self.sim.drain_instance(name)
        for name in sorted(wanted):
            if name not in taking_work:
                role: Role = "prefill" if wanted[name] == "prefill" else "decode"
                self.recorder.add_pod(name, role)
                self.sim.add_ready_instance(role, name)

    def advance_to(self, time_s: float) -> None:
        """Run the engines to `time_s` seconds after start; then refresh the gauges."""
        if self.period_s is not None:
            trace = self.trace
            while self.copies * self.period_s < time_s + LOOP_LOOKAHEAD_SECONDS:
                offset = self.copies * self.period_s
                self.sim.append_requests(
                    (trace.arrival_s + offset).tolist(),
                    trace.input_tokens.tolist(),
                    trace.output_tokens.tolist(),
                )
                self.copies += 1
        self.sim.advance_to(time_s)
        self.recorder.refresh()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        return render(self.recorder.store, self.faults, self.config.engine, accept)

    def _count_met(self) -> tuple[int, int, int]:
        """Completed requests within the TTFT SLO, the TPOT SLO and both, counted from the simulator's own
        per-request record (`metrics.slo_met`, as `dopd simulate` scores), incrementally."""
        log, slo = self.sim.log, self.config.spec.slo
        done = log.finish_output_index[self._scored :]
        if done:
            ttft = np.asarray([log.ttft_s[r] for r in done], dtype=np.float64)
            tpot = np.asarray([log.tpot_s[r] for r in done], dtype=np.float64)
            both = slo_met(ttft, tpot, slo.ttft_seconds, slo.tpot_seconds)
            ttft_ok = int(np.count_nonzero(ttft <= slo.ttft_seconds))
            tpot_ok = int(np.count_nonzero(tpot <= slo.tpot_seconds))
            met = self._met
            self._met = (met[0] + ttft_ok, met[1] + tpot_ok, met[2] + int(np.count_nonzero(both)))
            self._scored += len(done)
        return self._met

    def truth(self, cluster_error: str | None = None) -> GroundTruth:
        sim, recorder = self.sim, self.recorder
        ttft_met, tpot_met, slo_met_total = self._count_met()
        pods = {
            name: PodTruth(
                role="prefill" if state.role == "prefill" else "decode",
                draining=state.draining,
                assigned=state.assigned,
                waiting=state.waiting,
                running=state.running,
                kv_usage=state.kv_usage,
            )
            for name, state in recorder.states.items()
        }
        ready_decode = [p.running for p in pods.values() if p.role == "decode" and not p.draining]
        return GroundTruth(
            engine=self.config.engine,
            namespace=self.config.namespace,
            name=self.config.name,
            model=self.config.spec.model,
            time_s=sim.now_s,
            arrival_rate_rps=recorder.arrival_rate_rps(),
            arrivals_total=recorder.arrivals_total,
            rejected_total=recorder.rejected_total,
            completed_total=recorder.completed_total,
            ttft_met_total=ttft_met,
            tpot_met_total=tpot_met,
            slo_met_total=slo_met_total,
            prefill_queue=len(sim.prefill_queue),
            decode_waiting=len(sim.decode_waiting),
            ready={
                r: sorted(n for n, p in pods.items() if p.role == r and not p.draining)
                for r in ("prefill", "decode")
            },
            draining={
                r: sorted(n for n, p in pods.items() if p.role == r and p.draining)
                for r in ("prefill", "decode")
            },
            pods=pods,
            decode_running_per_replica=statistics.fmean(ready_decode) if ready_decode else None,
            trace_copies=self.copies,
            trace_ended=self.period_s is None and sim.arrivals_processed >= len(sim.arrival_s),
            cluster_error=cluster_error,
        )
