"""Capacity-model accuracy at a steady load: for each length mix and pool size, the highest Poisson rate
the capacity model says N replicas of one role serve within the SLO, against the highest the simulator's
engines actually serve (the other pool ample), over several seeds. Written to
docs/benchmarks/capacity.md and docs/benchmarks/capacity/results.json, stamped with the commit.

The simulator benchmark's oracle factors (docs/benchmarks/sim.md) measure the model through a policy: the
oracle sizes every tick for the busiest window of its lead time, on a load that moves, and the trace's
attainment is one number over all of it, so a factor below 1 mixes the model's error with where a policy
may spend the 1% of requests the target lets miss. Here nothing moves: a rate, N replicas, and the share
of requests within the SLO; the ratio of the two highest rates is the model's own error (1.0 exact,
below 1 conservative: it would buy more replicas than needed; above 1 optimistic).

Each mix at Poisson arrivals, and the suite's bursty mixes (long-mix, code: gamma gaps of CV 2, squared CV
4) at theirs too, the model told that burstiness: where the suite's oracle finds the model's sizes too
many on a bursty trace, these rows say whether the model's treatment of burstiness is the cause.

The model's prefill wait is a FIFO queue's. The simulated router is FIFO in the main table (the
baselines', vLLM's default); the prefill rows are measured again behind dopd's own length-aware router
(`dopd_worker.scheduler`, with its dispatch deadline), the queue the model sizes for in production: what
it serves at the attainment target, not at the P90, is what the model has to predict.

    python bench/capacity_bench.py            # 3 seeds, 1, 4 (and 16 prefill) replicas, 6 mixes x arrivals (~25 min)
    python bench/capacity_bench.py --quick    # 1 seed, 1 replica, to check the script
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sim_bench import stamp

from dopd_sim.config import QueuePolicy
from dopd_sim.report import MeanCI
from dopd_sim.steady import BRACKET, Role, measure

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
RESULTS = DOCS / "capacity" / "results.json"
MIXES = ("azure", "long-mix", "code", "reasoning")  # dopd_sim.synthetic.LENGTH_MIXES
# Arrivals' coefficients of variation per mix: 1 (Poisson) for each, and the suite's bursty CV 2 where the
# suite's trace of that mix has it (bench/sim_bench.py: long-mix, code).
ARRIVAL_CVS = {"azure": (1.0,), "long-mix": (1.0, 2.0), "code": (1.0, 2.0), "reasoning": (1.0,)}
ROLES: tuple[Role, ...] = ("prefill", "decode")
# The roles measured per mix: both, but for reasoning, whose prompts (800 tokens) are of Azure's kind and
# whose decode pool is what it adds: capped by its KV cache, not its batch limit, and holding answers a
# minute or two long. Its runs at 1 and 4 decode replicas last a hundred lives and more; larger pools
# would need runs long beside the minutes an answer may wait for a slot and still meet its TPOT (a
# shorter run lets a pool defer them past its end: docs/benchmarks/sim-history.md).
MIX_ROLES: dict[str, tuple[Role, ...]] = {"reasoning": ("decode",)}
# Pool sizes per role: 1 and 4 for both, and 16 prefill replicas, the size the suite's traces run (long-mix
# holds about 20), where a pooled queue's waits differ most from a small pool's. (16 decode replicas would
# mean steady loads of 700-3800 rps: hours of simulation for a role whose pools stay small in the suite.)
REPLICAS: dict[Role, tuple[int, ...]] = {"prefill": (1, 4, 16), "decode": (1, 4)}
SEEDS = (0, 1, 2)
# The simulated router's prefill queue: FIFO for every role; dopd's length-aware queue for prefill rows
# (decode is not queued by it).
QUEUES: dict[Role, tuple[QueuePolicy, ...]] = {"prefill": ("fifo", "length-aware"), "decode": ("fifo",)}
BAND = (0.9, 1.1)  # the issue's target for the model's sizes


def _row(
    mix: str, role: Role, replicas: int, seed: int, arrival_cv: float, queue: QueuePolicy
) -> dict[str, Any]:
    started = time.process_time()
    found = measure(mix, role, replicas, seed, arrival_cv, queue)
    return {**dataclasses.asdict(found), "ratio": found.ratio, "cpu_s": time.process_time() - started}


def run(quick: bool, jobs: int) -> dict[str, Any]:
    seeds = SEEDS[:1] if quick else SEEDS
    cases = [
        (m, r, n, s, cv, q)
        for m in MIXES
        for cv in ARRIVAL_CVS[m]
        for r in MIX_ROLES.get(m, ROLES)
        for q in QUEUES[r]
        for n in (REPLICAS[r][:1] if quick else REPLICAS[r])
        for s in seeds
    ]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_row, *case) for case in cases]
        rows = []
        for future in futures:
            row = future.result()
            print(
                f"{row['mix']} (arrivals CV {row['arrival_cv']:g}) {row['role']} x{row['replicas']} "
                f"({row['prefill_queue']} router) seed {row['seed']}: model {row['model_rps']:.1f} "
                f"rps, simulator {row['sim_rps']:.1f} rps, ratio {row['ratio']:.3f}",
                flush=True,
            )
            rows.append(row)
    return {"rows": rows, "meta": {**stamp(), "quick": quick, "seeds": len(seeds)}}


def render(raw: dict[str, Any]) -> str:
    meta = raw["meta"]
    low, high = BAND
    lines = [
        "# Capacity-model accuracy at a steady load",
        "",
        f"Generated by `python bench/capacity_bench.py`{' --quick (not the committed numbers)' if meta['quick'] else ''}"
        f" at commit `{meta['commit']}`{' (with uncommitted changes)' if meta['dirty'] else ''} on "
        f"{meta['date']}, {meta['machine']}; {meta['seeds']} seed(s) per row, mean ± 95% interval.",
        "",
        "Llama-3-8B on H100 (`llama3-8b-h100`), SLO TTFT 1.5 s / TPOT 50 ms at P90 with a 99% attainment "
        "target, so a pool meets it when 99% of requests are within its objective. For N replicas of one "
        "role (the other pool twice what the model asks, plus 2), the highest rate the capacity model says "
        "they serve, against the highest the simulator's engines serve behind a FIFO router (the baselines', "
        "vLLM's default; bisection, about 1%), with Poisson "
        "arrivals or gamma-distributed gaps of the CV shown (the suite's bursty traces), the model told "
        "their burstiness. "
        "Ratio = model / simulator: 1.0 exact, below 1 the model is conservative (it buys more replicas "
        f"than needed), above 1 optimistic. Target: within [{low}, {high}] (the issue's 10%). Where some "
        "requests miss with nobody ahead of them (long-mix's longest prompts take longer than the TTFT "
        "alone) the goal is 99% of the share an idle pool reaches, as the model sizes for the others and "
        "the simulator benchmark's oracle calibration does.",
        "",
    ]
    by_queue = {q: [r for r in raw["rows"] if r["prefill_queue"] == q] for q in ("fifo", "length-aware")}
    lines += _table(by_queue["fifo"])
    lines += [
        f"A row whose simulator rate sits at an end of its bracket ({BRACKET[0]}x-{BRACKET[1]}x the "
        "model's) counts as not within.",
        "",
        "## Prefill behind dopd's router",
        "",
        "The same prefill rows with the simulated router's queue length-aware, ordered by "
        "`dopd_worker.scheduler` as dopd's router orders it (shortest prompt first, a 1 s aging bound, "
        "long prompts kept off one replica, a prompt past 2/3 of the TTFT SLO after the timely ones), "
        "the model unchanged: its wait is FIFO's, which the operator sizes dopd's "
        "router with. A ratio below the FIFO row's: dopd's router serves more prompts within the TTFT at "
        "the target than FIFO does, and the model buys it more replicas than the engines need.",
        "",
    ]
    lines += _table(by_queue["length-aware"])
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table (mean ± interval over seeds) per (mix, arrivals, role, replicas), then how many
    rows are within the band on every seed."""
    low, high = BAND

    def key(row: dict[str, Any]) -> tuple[str, float, str, int]:
        return row["mix"], float(row["arrival_cv"]), row["role"], row["replicas"]

    keys = sorted({key(r) for r in rows}, key=lambda k: (MIXES.index(k[0]), k[1], k[2], k[3]))
    lines = [
        "| length mix | arrivals | role | replicas | model (rps) | simulator (rps) | ratio | within 10% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    met = 0
    for mix, cv, role, replicas in keys:
        group = [r for r in rows if key(r) == (mix, cv, role, replicas)]
        arrivals = "Poisson" if cv == 1.0 else f"gamma, CV {cv:g}"
        ratio = MeanCI.of([r["ratio"] for r in group])
        inside = all(low <= r["ratio"] <= high for r in group) and all(r["bracketed"] for r in group)
        met += inside
        lines.append(
            f"| {mix} | {arrivals} | {role} | {replicas} | {MeanCI.of([r['model_rps'] for r in group]).format('.1f')} | "
            f"{MeanCI.of([r['sim_rps'] for r in group]).format('.1f')} | {ratio.format('.3f')} | "
            f"{'yes' if inside else 'no'} |"
        )
    return [*lines, "", f"{met} of {len(keys)} rows within 10% on every seed.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 replica per role")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from results.json")
    args = parser.parse_args()
    if args.render_only:
        raw = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        started = time.perf_counter()
        raw = run(args.quick, args.jobs)
        raw["meta"]["wall_s"] = time.perf_counter() - started
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    page = DOCS / "capacity.md"
    page.write_text(render(raw), encoding="utf-8")
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
