"""Fuzz every reader of untrusted input ≥ 1 000 times and tabulate what happened.

    python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--targets NAME ...] [--json out.json]

The targets and their damage (truncation, random and flipped bytes, wrong shapes and dtypes, absurd
sizes, forged headers, bombs) are those of `tests/test_fuzz.py`, driven here by a seeded
`random.Random` per case, so a case is reproduced by its (seed, index). Each target runs in its own
process, so its peak resident memory (ru_maxrss, beyond what the process held after its first case) is
its own. Outcomes: "read" (a consistent result), "AtomddError" (refused with a message), "CRASH" (any
other exception: a bug). Exits 1 if any case crashed or used more than --max-mb traced memory.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _targets():
    sys.path.insert(0, str(ROOT / "tests"))
    import test_fuzz

    return test_fuzz


def run_target(name: str, cases: int, seed: int) -> dict:
    fuzz = _targets()
    target = fuzz.TARGETS[name]
    target.warm_up()
    fuzz.run_case(target, random.Random(f"{seed}-warmup"))  # imports and first-call allocations
    fuzz._bomb_png(10000, 9500)  # the generator's own bytes, made once
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: collections.Counter[str] = collections.Counter()
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    crashes, peak, t0 = [], 0, time.perf_counter()
    for i in range(cases):
        kind, outcome, traced = fuzz.run_case(target, random.Random(f"{seed}-{name}-{i}"))
        short = "CRASH" if outcome.startswith("CRASH") else outcome
        outcomes[short] += 1
        kinds[kind][short] += 1
        peak = max(peak, traced)
        if short == "CRASH" and len(crashes) < 20:
            crashes.append({"case": i, "kind": kind, "error": outcome})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "target": name,
        "cases": cases,
        "outcomes": dict(outcomes),
        "kinds": {k: dict(v) for k, v in sorted(kinds.items())},
        "max_traced_mb": peak / 2**20,
        "rss_growth_mb": (rss - base) / 1024,  # Linux: KiB
        "seconds": time.perf_counter() - t0,
        "crashes": crashes,
    }


def _worker(args: tuple[str, int, int]) -> dict:
    return run_target(*args)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1000, help="cases per target (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", nargs="*", default=None, help="default: all")
    p.add_argument("--max-mb", type=float, default=32.0, help="traced memory allowed per case (MB)")
    p.add_argument("--jobs", type=int, default=1, help="targets run in parallel (default 1)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    names = args.targets or list(_targets().TARGETS)
    ctx = mp.get_context("spawn")  # a fresh process per target: its own peak memory
    t0 = time.perf_counter()
    with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
        results = pool.map(_worker, [(n, args.cases, args.seed) for n in names], chunksize=1)
    wall = time.perf_counter() - t0
    print(
        f"{'target':<16} {'cases':>6} {'read':>6} {'AtomddError':>11} {'crash':>6} {'traced MB':>9} "
        f"{'RSS +MB':>8} {'s':>6}"
    )
    bad = False
    for r in results:
        o = r["outcomes"]
        print(
            f"{r['target']:<16} {r['cases']:>6} {o.get('read', 0):>6} {o.get('AtomddError', 0):>11} "
            f"{o.get('CRASH', 0):>6} {r['max_traced_mb']:>9.1f} {r['rss_growth_mb']:>8.1f} "
            f"{r['seconds']:>6.1f}"
        )
        bad |= bool(o.get("CRASH")) or r["max_traced_mb"] > args.max_mb
        for c in r["crashes"]:
            print(f"    crash, case {c['case']} ({c['kind']}): {c['error']}")
    total = sum(r["cases"] for r in results)
    print(
        f"{total} cases in {wall:.0f} s (seed {args.seed}); command: python benchmarks/fuzz.py "
        f"--cases {args.cases} --seed {args.seed}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"seed": args.seed, "wall_seconds": wall, "targets": results}, indent=2)
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
