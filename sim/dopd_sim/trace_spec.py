"""A synthetic trace from a spec string (`dopd simulate --trace synthetic:KIND,key=value...`): the
arrival shapes and length mixes of `synthetic`, and the multi-turn chat of `conversations`. Unknown kinds,
parameters and length mixes are errors that name what is accepted. Callers: `workload.load_workload`, tests.
"""

from __future__ import annotations

from dopd_forecaster.traces import Trace
from dopd_sim.conversations import ChatModel, conversations
from dopd_sim.synthetic import (
    LENGTH_MIXES,
    LengthModel,
    Lengths,
    MixShift,
    bursts,
    diurnal,
    gamma_bursty,
    poisson,
    steps,
    trend,
)


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`KIND[,key=value...]` as its kind and its keys' values (as written)."""
    kind, *pairs = [part.strip() for part in spec.split(",") if part.strip()]
    args: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        args[key.strip()] = value.strip()
    return kind, args


def generate_from_spec(spec: str, seed: int = 0) -> Trace:
    """`KIND[,key=value...]`, e.g. `diurnal,mean_rps=40,duration_s=7200,period_s=3600`,
    `gamma,rate_rps=20,cv=3,duration_s=600`, `step,rates=10/40/10,step_seconds=600`,
    `bursts,base_rps=60,factor=3,burst_s=120,per_hour=6,duration_s=3600`,
    `trend,start_rps=30,end_rps=200,duration_s=3600`; any kind but chat takes
    `lengths=azure|long-mix|code|reasoning`, and `shift_to=MIX,shift_start_s=S,shift_end_s=E` moves its
    requests from that mix to another between S and E seconds (`MixShift`). `chat,conversations_per_s=10,duration_s=1800` is multi-turn
    conversations with prompt block hashes (`conversations`: turns_mean, think_s, tenants)."""
    kind, args = split_spec(spec)

    def number(key: str, default: float) -> float:
        return float(args.pop(key, default))

    if kind == "chat":
        chat = ChatModel(
            tenants=int(number("tenants", 16)),
            turns_mean=number("turns_mean", 4.0),
            think_seconds_mean=number("think_s", 60.0),
        )
        talk = conversations(number("conversations_per_s", 5.0), number("duration_s", 1800.0), seed, chat)
        if args:
            raise ValueError(
                f"unknown parameters for synthetic:chat: {', '.join(sorted(args))} (a chat trace draws "
                "its own lengths; it takes conversations_per_s, duration_s, turns_mean, think_s, tenants)"
            )
        return talk
    lengths = _lengths(args)
    trace: Trace
    if kind == "poisson":
        trace = poisson(number("rate_rps", 10), number("duration_s", 600), seed, lengths)
    elif kind == "gamma":
        trace = gamma_bursty(
            number("rate_rps", 10), number("duration_s", 600), number("cv", 3.0), seed, lengths
        )
    elif kind == "diurnal":
        trace = diurnal(
            number("mean_rps", 10),
            number("duration_s", 7200),
            number("period_s", 3600),
            number("peak_to_trough", 4),
            seed,
            lengths,
        )
    elif kind == "step":
        rates = [float(x) for x in args.pop("rates", "10/40/10").split("/")]
        trace = steps(rates, number("step_seconds", 600), seed, lengths)
    elif kind == "bursts":
        trace = bursts(
            number("base_rps", 10),
            number("duration_s", 3600),
            number("factor", 3.0),
            number("burst_s", 120),
            number("per_hour", 6),
            seed,
            lengths,
        )
    elif kind == "trend":
        trace = trend(
            number("start_rps", 10), number("end_rps", 40), number("duration_s", 3600), seed, lengths
        )
    else:
        raise ValueError(
            f"unknown synthetic trace kind {kind!r}; use poisson, gamma, diurnal, step, bursts, trend or chat"
        )
    if args:
        raise ValueError(f"unknown parameters for synthetic:{kind}: {', '.join(sorted(args))}")
    return trace


def _mix(name: str, key: str) -> LengthModel:
    if name not in LENGTH_MIXES:
        raise ValueError(f"unknown length mix {key}={name!r}; use one of: {', '.join(LENGTH_MIXES)}")
    return LENGTH_MIXES[name]


def _lengths(args: dict[str, str]) -> Lengths:
    """`lengths=MIX` (azure by default), moving to `shift_to=MIX` between `shift_start_s` and
    `shift_end_s` where given; the keys it reads are taken out of `args`."""
    before = _mix(args.pop("lengths", "azure"), "lengths")
    shift = {key: args.pop(key) for key in ("shift_to", "shift_start_s", "shift_end_s") if key in args}
    if not shift:
        return before
    if len(shift) < 3:
        raise ValueError(
            "a mix shift takes all of shift_to, shift_start_s and shift_end_s "
            f"(got only {', '.join(sorted(shift))})"
        )
    return MixShift(
        before,
        _mix(shift["shift_to"], "shift_to"),
        float(shift["shift_start_s"]),
        float(shift["shift_end_s"]),
    )
