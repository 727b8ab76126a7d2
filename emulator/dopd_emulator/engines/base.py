"""What every engine recorder shares: it hears the stepped simulator's events (`EngineObserver`), keeps
each request's timeline, and turns events and the instant state of each replica into one engine's
metric families in a `MetricStore`. The per-engine modules (`dopd`, `vllm`, `sglang`) only say which
families exist on which role, with which labels, and what each event adds to them.

Instant state per pod (`PodState`, refreshed after every clock step):
- prefill pod: running = prompts in its current batch; assigned = prompts the router handed it that
  wait for its next batch; KV usage = the batch's tokens / the replica's KV capacity.
- decode pod: running = sequences in its batch; assigned = sequences admitted but not yet in the batch;
  KV usage = KV reserved (prompt + output, reserved at admission as the simulator does) / capacity.
- the simulator also has shared queues: the router's prefill queue (prompts no prefill worker has room
  for) and the sequences whose KV arrived but no decode replica has room. Engines with only per-pod
  queues (vLLM, SGLang: their proxy forwards at once) see them split evenly over the pods of the role
  taking work, the first pods by name taking the remainder, as a round-robin proxy would spread them:
  waiting = assigned + that share. The dopd router holds the prefill queue and says so in its own gauge.
Callers: `emulator.Emulator` (construction, pods, refresh), the simulator (events), `exposition`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dopd_emulator.store import Family, FloatArray, MetricStore
from dopd_operator.api import Engine
from dopd_sim.instances import DecodeInstance, PrefillInstance
from dopd_sim.stepping import SteppedSimulator

ARRIVAL_WINDOW_SECONDS = 10.0  # the ground truth's arrival rate is over this many simulated seconds


@dataclass(frozen=True)
class LabelScheme:
    """Label names and the values every series carries (from the DisaggregatedModel's spec.metrics)."""

    namespace_label: str
    namespace: str
    role_label: str
    model: str
    extra: Mapping[str, str] = field(default_factory=dict)  # spec.metrics.selector keys the engine lacks


@dataclass
class RequestTrack:
    """One request's timeline in simulated seconds, kept from arrival to completion."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefill_start_s: float | None = None
    first_token_s: float | None = None
    kv_arrival_s: float | None = None
    join_s: float | None = None
    finish_s: float | None = None


@dataclass(frozen=True)
class PodState:
    """One replica's instant state, as its gauges show it (module doc)."""

    role: str
    draining: bool
    assigned: (
        int  # prefill: prompts the router handed it, not yet in a batch; decode: admitted, not yet joined
    )
    waiting: int  # assigned + its share of the shared queue of its role
    running: int
    kv_usage: float
    generated_tokens: float  # decode: the tokens its batch has generated so far, summed; prefill: 0


def split_evenly(total: int, pods: Sequence[str]) -> dict[str, int]:
    """`total` items over `pods` (sorted by name), the first ones taking one more when it does not divide."""
    ordered = sorted(pods)
    if not ordered:
        return {}
    share, extra = divmod(total, len(ordered))
    return {pod: share + (1 if i < extra else 0) for i, pod in enumerate(ordered)}


class EngineRecorder:
    """Base of the per-engine recorders (module doc); subclasses fill in the `on_*` hooks."""

    engine: Engine
    families: tuple[Family, ...]

    def __init__(self, sim: SteppedSimulator, scheme: LabelScheme, router_pod: str | None = None) -> None:
        self.sim = sim
        self.scheme = scheme
        self.store = MetricStore(self.families)
        self.pods: dict[str, str] = {}  # pod -> role
        self.states: dict[str, PodState] = {}  # replica pods at the last refresh
        self.router_pod = router_pod
        self._tracks: dict[int, RequestTrack] = {}
        self.recent_arrivals_s: deque[float] = deque()
        self.arrivals_total = 0
        self.rejected_total = 0
        self.completed_total = 0
        profile = sim.profile
        self.kv_capacity_tokens = profile.kv_capacity_tokens
        self.kv_bytes_per_token = profile.kv_bytes_per_token
        self.kv_seconds_per_token = profile.kv_transfer_seconds_per_token
        if router_pod is not None:
            self.pods[router_pod] = "router"
            self.register("router", router_pod)

    # ------------------------------------------------------------------- per-engine (override)

    def families_for(self, role: str) -> tuple[Family, ...]:
        """The families a pod of `role` exposes from the start."""
        raise NotImplementedError

    def labels(self, family: Family, role: str) -> dict[str, str]:
        """The series labels of `family` on a pod of `role` (the store adds nothing; `pod` included)."""
        raise NotImplementedError

    def on_arrived(self, track: RequestTrack) -> None:
        """A request admitted at arrival (engines with a router count it there)."""

    def on_rejected(self, track: RequestTrack) -> None:
        """A request refused at arrival (its prompt fits no decode replica's KV cache)."""

    def on_first_token(self, pod: str, track: RequestTrack) -> None:
        raise NotImplementedError

    def on_kv_arrived(self, track: RequestTrack) -> None:
        """The prompt's KV reached the decode side (dopd's decode worker emits the first token here)."""

    def on_joined(self, pod: str, track: RequestTrack) -> None:
        raise NotImplementedError

    def on_steps(self, pod: str, step_seconds: FloatArray, sequences: int) -> None:
        raise NotImplementedError

    def on_finished(self, pod: str, role: str, track: RequestTrack) -> None:
        raise NotImplementedError

    def on_gauges(self, pod: str, role: str, state: PodState) -> None:
        raise NotImplementedError

    def on_router_gauges(self, queued: int, in_flight: int) -> None:
        """dopd only: the router's queue and the requests it has in flight."""

    # ------------------------------------------------------------------------------- helpers

    def register(self, role: str, pod: str) -> None:
        for family in self.families_for(role):
            self.store.ensure(family.name, self.series_labels(family, role, pod), role, pod)

    def series_labels(self, family: Family, role: str, pod: str, **more: str) -> dict[str, str]:
        labels = {**self.scheme.extra, **self.labels(family, role)}
        labels[self.scheme.namespace_label] = self.scheme.namespace
        labels["pod"] = pod
        labels.update(more)
        return labels

    def inc(self, name: str, pod: str, amount: float = 1.0, **more: str) -> None:
        role = self.pods[pod]
        family = self.store.family(name)
        self.store.inc(name, self.series_labels(family, role, pod, **more), role, pod, amount)

    def set(self, name: str, pod: str, value: float) -> None:
        role = self.pods[pod]
        self.store.set(name, self.series_labels(self.store.family(name), role, pod), role, pod, value)

    def observe(self, name: str, pod: str, values: FloatArray | float, weight: float = 1.0) -> None:
        role = self.pods[pod]
        labels = self.series_labels(self.store.family(name), role, pod)
        self.store.observe(name, labels, role, pod, values, weight)

    # ------------------------------------------------------------------------ pods (emulator)

    def add_pod(self, pod: str, role: str) -> None:
        """A replica became Ready (idempotent: a draining pod that is Ready again keeps its series)."""
        if self.pods.get(pod, role) != role:
            raise ValueError(f"pod {pod!r} is already a {self.pods[pod]} pod")
        if pod not in self.pods:
            self.pods[pod] = role
            self.register(role, pod)

    def refresh(self) -> None:
        """Gauges from the simulator's instant state (module doc)."""
        sim = self.sim
        instances = sim.instances()
        taking_work = [n for n, i in instances.items() if not i.draining]
        prefill_share = split_evenly(
            len(sim.prefill_queue), [n for n in taking_work if instances[n].role == "prefill"]
        )
        decode_share = split_evenly(
            len(sim.decode_waiting), [n for n in taking_work if instances[n].role == "decode"]
        )
        self.states = {}
        for pod, instance in instances.items():
            if isinstance(instance, PrefillInstance):
                tokens = sum(sim.input_tokens[r] for r in instance.batch)
                assigned, share = len(instance.held), prefill_share.get(pod, 0)
                running, kv = len(instance.batch), tokens / self.kv_capacity_tokens
                generated = 0.0
            else:
                assert isinstance(instance, DecodeInstance)
                assigned, share = len(instance.pending), decode_share.get(pod, 0)
                running, kv = instance.batch_size, instance.kv_usage()
                generated = instance.generated_tokens(sim.now_s)
            state = PodState(
                instance.role, instance.draining, assigned, assigned + share, running, kv, generated
            )
            self.states[pod] = state
            self.on_gauges(pod, instance.role, state)
        if self.router_pod is not None:
            in_flight = self.arrivals_total - self.rejected_total - self.completed_total
            self.on_router_gauges(len(sim.prefill_queue), in_flight)

    def arrival_rate_rps(self) -> float:
        """Arrivals over the last ARRIVAL_WINDOW_SECONDS of simulated time (all of it, early on)."""
        window = min(ARRIVAL_WINDOW_SECONDS, self.sim.now_s)
        cutoff = self.sim.now_s - ARRIVAL_WINDOW_SECONDS
        while self.recent_arrivals_s and self.recent_arrivals_s[0] <= cutoff:
            self.recent_arrivals_s.popleft()
        return len(self.recent_arrivals_s) / window if window > 0 else 0.0

    # ------------------------------------------------------------------ the simulator's events

    def arrived(self, request: int, now_s: float) -> None:
        sim = self.sim
        track = RequestTrack(now_s, sim.input_tokens[request], sim.output_tokens[request])
        self._tracks[request] = track
        self.arrivals_total += 1
        self.recent_arrivals_s.append(now_s)
        self.on_arrived(track)

    def rejected(self, request: int, now_s: float) -> None:
        sim = self.sim
        self.arrivals_total += 1
        self.rejected_total += 1
        self.recent_arrivals_s.append(now_s)
        self.on_rejected(RequestTrack(now_s, sim.input_tokens[request], sim.output_tokens[request]))

    def prefill_started(self, instance: str, requests: Sequence[int], now_s: float) -> None:
        for request in requests:
            self._tracks[request].prefill_start_s = now_s

    def first_token(self, instance: str, request: int, now_s: float) -> None:
        track = self._tracks[request]
        track.first_token_s = now_s
        self.on_first_token(instance, track)

    def kv_arrived(self, request: int, now_s: float) -> None:
        track = self._tracks[request]
        track.kv_arrival_s = now_s
        self.on_kv_arrived(track)

    def decode_admitted(self, instance: str, request: int, now_s: float) -> None:
        """Nothing to count: an admitted sequence shows in its pod's waiting gauge until it joins."""

    def decode_joined(self, instance: str, request: int, now_s: float) -> None:
        track = self._tracks[request]
        track.join_s = now_s
        self.on_joined(instance, track)

    def decode_steps(self, instance: str, step_seconds: FloatArray, sequences: int) -> None:
        self.on_steps(instance, step_seconds, sequences)

    def finished(self, instance: str, request: int, now_s: float) -> None:
        track = self._tracks.pop(request)
        track.finish_s = now_s
        self.completed_total += 1
        self.on_finished(instance, self.pods[instance], track)

    def removed(self, instance: str, now_s: float) -> None:
        self.store.drop_pod(instance)
        del self.pods[instance]
