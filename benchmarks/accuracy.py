"""Accuracy of every method under one budget: coresets and distillation, through the same protocol.

For each IPC, method and distillation seed: make the set (coreset selection, or distillation with
`--steps` steps), then train `--runs` fresh ConvNets on it for `--epochs` epochs and test them on the
real test set. Every set and its eval.json live under --out, and a finished one is reused, so an
interrupted benchmark continues where it stopped (distillation resumes from its checkpoint).

A method is a registry name with optional overrides, for ablations: `atom[p_spatial=2,p_channel=6]`.

    # the budget the official code was re-run with (reference.md)
    python benchmarks/accuracy.py --data-root DATA --steps 200 --epochs 300 --runs 3
    # longer: judge methods apart
    python benchmarks/accuracy.py --data-root DATA --steps 1000 --epochs 300 --runs 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--methods", nargs="+", default=["random", "herding", "kcenter", "dm", "datadam", "atom"])
    ap.add_argument("--steps", type=int, default=200, help="distillation steps")
    ap.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    ap.add_argument("--runs", type=int, default=3, help="evaluation models per set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="distillation / selection seeds")
    ap.add_argument(
        "--out", default=None, help="default: benchmarks/results/accuracy-<dataset>-s<steps>-e<epochs>"
    )
    ap.add_argument("--report", action="store_true", help="only tabulate the finished sets under --out")
    ap.add_argument("--against", default="atom", help="method the paired differences (Δ) are taken against")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--test-limit",
        type=int,
        default=0,
        metavar="N",
        help="also report accuracy on the first N test images (CIFAR-10 here: 1000, its exact part)",
    )
    args = ap.parse_args()
    from atomdd import jobs
    from atomdd.errors import AtomddError
    from atomdd.hardware import tune_cpu_allocator
    from atomdd.lock import hold
    from atomdd.report import grid_table
    from atomdd.signals import stop_on_signals

    tune_cpu_allocator()
    out = Path(args.out or f"benchmarks/results/accuracy-{args.dataset}-s{args.steps}-e{args.epochs}")
    budget = jobs.Budget(args.dataset, args.steps, args.epochs, args.runs, args.test_limit, args.data_root)
    try:  # e.g. interrupted (the checkpoint is kept, a rerun resumes), or --out in use
        with hold(out), stop_on_signals() as stop:  # one process writes under --out at a time
            results = grid(args, out, budget, stop)
    except AtomddError as e:
        raise SystemExit(str(e)) from None
    except KeyboardInterrupt as e:  # a signal outside a distillation's loop (signals.Stopped)
        raise SystemExit(128 + getattr(e, "signum", 2)) from None
    print("\n" + grid_table(results, budget, args.against))


def grid(args: argparse.Namespace, out: Path, budget, stop: object) -> dict:
    """Make and evaluate every job not finished under `out`; write and return accuracy.json's results."""
    from atomdd import jobs
    from atomdd.io import versions, write_json

    t0 = time.perf_counter()
    for ipc in [] if args.report else args.ipc:
        for spec in args.methods:
            for seed in args.seeds:
                folder = jobs.job_folder(out, spec, ipc, seed)
                t = time.perf_counter()
                report = jobs.finished(folder, budget)  # evaluated: its set file is not needed
                if report is None:
                    syn = jobs.make_set(spec, ipc, seed, budget, folder, not args.progress, stop)
                    report = jobs.evaluate_job(syn, folder, budget)
                made = time.perf_counter() - t
                accs = report["models"][jobs.EVAL_MODEL]["runs"]
                print(
                    f"ipc {ipc:>2} {spec:<40} seed {seed}: {statistics.mean(accs):6.2f} "
                    f"(make {made:.0f}s, eval {report['seconds']:.0f}s)",
                    flush=True,
                )
    results = jobs.collect(out, budget, args.methods, args.against)
    write_json(
        out / "accuracy.json",
        {
            "dataset": args.dataset,
            "budget": {
                "steps": args.steps,
                "epochs": args.epochs,
                "runs": args.runs,
                "test_limit": args.test_limit,
            },
            "results": results,
            "seconds": time.perf_counter() - t0,
            "versions": versions(),
            "command": " ".join(sys.argv),
        },
    )
    return results


if __name__ == "__main__":
    main()
