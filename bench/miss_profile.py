"""Where a policy's SLO misses fall: by output length, and how many finished only after the last arrival.

    python bench/miss_profile.py SCENARIO [--seed N] [--policy oracle|dopd|static-peak] [--load-goes-on S]

Runs one benchmark scenario and seed (`sim_bench.SCENARIOS`, or a held-out shape of
`held_out.HELD_OUT`) as its benchmark runs it: the oracle at the calibration factors its results.json
(docs/benchmarks/sim/ or held-out/) recorded for that seed, dopd, or static-peak (held
to the target the oracle was held to there). Prints the scored
requests and misses per output-length band, and how many misses finished only after the trace's last
arrival: requests a pool left waiting until the load stopped. The attainment target counts such a
request as one miss, however long it waited. Whether a layout leans on the load stopping shows with
`--load-goes-on S`: the same requests, then S seconds more drawn from the scenario's law (a generated
scenario; a step scenario's last level goes on; `Scenario.run_trace`), replayed and decided on by the
policy (the oracle sees them), and the same requests and span scored (static-peak keeps the layout it
was sized and raised to as its benchmark ran it). The shapes whose benchmark runs them with their load
going on already (`Scenario.goes_on_s`: every held-out shape that can, and the suite's reasoning,
reasoning-shift, code, steps and trend) run so without it; `--load-goes-on` sets how long. On the reasoning trace
the oracle's 1% goes to long outputs passed over while timely ones arrive: its attainment is the same
with the load going on, and a third of those misses still wait 10 minutes after the span
(docs/benchmarks/sim.md, "Reading the results").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from held_out import HELD_OUT
from held_out import RESULTS as HELD_OUT_RESULTS
from sim_bench import RESULTS, SCENARIOS, oracle_target, suite_entry

from dopd_sim.benchmark import static_peak_run
from dopd_sim.config import SimConfig
from dopd_sim.miss_profile import miss_profile
from dopd_sim.policies.dopd import DopdPolicy
from dopd_sim.policies.oracle import OraclePolicy
from dopd_sim.policies.static import StaticPolicy
from dopd_sim.run import fixed_layout_span, simulate


def _recorded_run(parser: argparse.ArgumentParser, name: str, seed: int) -> dict[str, Any]:
    """The benchmark's entry for `name` and `seed` in its results.json (its tuning and rows)."""
    results = HELD_OUT_RESULTS if name in {s.name for s in HELD_OUT} else RESULTS
    try:
        return suite_entry(json.loads(results.read_text(encoding="utf-8")), name, seed, results)
    except KeyError as missing:
        parser.error(str(missing.args[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[s.name for s in (*SCENARIOS, *HELD_OUT)])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", choices=["oracle", "dopd", "static-peak"], default="oracle")
    parser.add_argument(
        "--load-goes-on",
        type=float,
        metavar="SECONDS",
        help="run on past the scenario's span with more of its load, scoring the same requests",
    )
    args = parser.parse_args()
    scenario = next(s for s in (*SCENARIOS, *HELD_OUT) if s.name == args.scenario)
    config = SimConfig(seed=args.seed)
    score_from_s = scenario.scored_from_s(False)
    if args.load_goes_on is not None:
        if not args.load_goes_on > 0:  # 0 would be the scenario's own run (`Scenario.run_trace`)
            parser.error(f"--load-goes-on needs more than 0 s, got {args.load_goes_on:g}")
        try:  # the scenario's own requests scored, its load going on as long as asked
            longer = dataclasses.replace(scenario, goes_on_s=args.load_goes_on)
            continued, own_end_s = longer.run_trace(args.seed, False)
        except ValueError as error:
            parser.error(str(error))
    if args.policy == "static-peak":
        # As its benchmark runs it (a held-out shape with its load going on), held to the seed's target
        # (the one the oracle was held to).
        goal = oracle_target(_recorded_run(parser, scenario.name, args.seed))
        base, base_until_s = scenario.run_trace(args.seed, False)
        trace, raised, score_until_s = static_peak_run(base, config, score_from_s, goal, base_until_s)
        result, what = raised.result, f"static-peak {raised.setting}"
        if args.load_goes_on is not None:  # that layout, run on with the load (the same rebasing)
            trace, _, score_until_s = fixed_layout_span(continued, score_from_s, own_end_s)
            result = simulate(trace, StaticPolicy(*raised.layout), config, score_until_s=score_until_s)
        score_from_s = 0.0  # the span it ran on is the scored one
    else:
        if args.load_goes_on is not None:
            trace, score_until_s = continued, own_end_s
        else:  # as its benchmark runs it
            trace, score_until_s = scenario.run_trace(args.seed, False)
        if args.policy == "oracle":
            run = _recorded_run(parser, scenario.name, args.seed)
            prefill_scale, decode_scale = run["tuning"]["oracle_scales"]
            policy: OraclePolicy | DopdPolicy = OraclePolicy(trace, prefill_scale, decode_scale)
            what = f"oracle at prefill x{prefill_scale:.2f}, decode x{decode_scale:.2f}"
        else:
            policy, what = DopdPolicy(), "dopd"
        result = simulate(trace, policy, config, score_from_s=score_from_s, score_until_s=score_until_s)
    profile = miss_profile(trace, result.ttft_s, result.tpot_s, config, score_from_s, score_until_s)
    goes_on_s = args.load_goes_on if args.load_goes_on is not None else scenario.goes_on_s
    if goes_on_s:
        what += f", the load going on {goes_on_s:g} s past the span (replayed, not scored)"
    print(
        f"{scenario.name} seed {args.seed}, {what}: {result.summary.slo_attainment * 100:.2f}% attainment, "
        f"{result.summary.gpu_hours:.2f} GPU-hours; {profile.misses} of {profile.requests} scored requests missed"
    )
    print("output tokens | requests | missed | share missed")
    for band in profile.bands:
        share = band.misses / band.requests * 100 if band.requests else 0.0
        print(f"{band.label:>13} | {band.requests:8d} | {band.misses:6d} | {share:.2f}%")
    print(
        f"misses that finished only after the last arrival: {profile.misses_finished_after_last_arrival} "
        f"(the last request finished {profile.latest_finish_after_last_arrival_s:.0f} s after it)"
    )


if __name__ == "__main__":
    main()
