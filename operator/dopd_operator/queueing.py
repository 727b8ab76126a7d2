"""The queueing and search arithmetic the capacity model's two pools share: Erlang C, and the monotone
searches that turn a predicate over replica counts or rates into the fewest replicas or the highest rate.

Pure. Callers: `capacity` (prefill) and `capacity_decode` (decode), the simulator's peak layouts and
benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy.special import gammaincc

MAX_REPLICAS_SEARCH = 100_000
EPS = 1e-9


def solve_increasing(share: Callable[[float], float], target: float, low: float) -> float:
    """The smallest t >= low with share(t) >= target, for a non-decreasing share (bisection)."""
    if share(low) >= target:
        return low
    high = max(low, 1e-3) * 2
    while share(high) < target:
        low, high = high, high * 2
        if high > 1e7:
            return math.inf
    for _ in range(32):
        mid = (low + high) / 2
        if share(mid) >= target:
            high = mid
        else:
            low = mid
    return high


def erlang_c(servers: float, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered_load = lambda/mu < servers).

    Erlang B is the Poisson(offered) probability of `servers` over that of at most `servers`, computed
    with the regularized incomplete gamma function, so it costs the same for 4 or 40,000 servers (decode
    slots) and takes real-valued server counts (a pool of 73.4 slots) continuously.
    """
    if offered_load <= 0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    log_pmf = servers * math.log(offered_load) - offered_load - math.lgamma(servers + 1.0)
    at_most = float(gammaincc(servers + 1.0, offered_load))
    erlang_b = min(math.exp(log_pmf) / at_most, 1.0) if at_most > 0 else 1.0
    return servers * erlang_b / (servers - offered_load * (1.0 - erlang_b))


def fewest_meeting(meets: Callable[[int], bool], start: int, ceiling: int, floor: int) -> int:
    """The smallest n in [floor, ceiling] with meets(n), for a predicate monotone in n; `ceiling` when
    none meets. Searched from `start`: halving down while it meets, else doubling up, then bisection, so a
    good guess costs a few evaluations. (Callers: the pools' sizes, the simulator's peak layouts.)"""
    high = min(max(start, floor), ceiling)
    low = floor - 1  # below the range: taken as not meeting
    if meets(high):
        while high > floor:
            probe = max(floor, high // 2)
            if not meets(probe):
                low = probe
                break
            high = probe
    else:
        low = high
        while True:
            if high >= ceiling:
                return ceiling
            high = min(max(high * 2, high + 1), ceiling)
            if meets(high):
                break
            low = high
    while high - low > 1:
        mid = (low + high) // 2
        if meets(mid):
            high = mid
        else:
            low = mid
    return high


def highest_fitting(fits: Callable[[float], bool], guess: float) -> float:
    """The highest rate with `fits(rate)`, for a predicate true at 0 and monotone (bisection from `guess`)."""
    low, high = 0.0, guess
    while fits(high) and high < 1e7:
        low, high = high, high * 2
    for _ in range(30):
        mid = (low + high) / 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low
