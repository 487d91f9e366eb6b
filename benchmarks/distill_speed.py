"""Seconds per distillation step, peak memory and achieved FLOP rate, against the machine's limit.

A 10-class 32×32 RGB problem (random pixels: speed does not depend on content), ConvNet-3 width 128,
each method at IPC 1/10/50 in fp32; for the baseline methods also bf16 autocast, the same loss
computed one class at a time (the published loop), and glibc's default allocator. Each
configuration runs in its own process so its peak memory is its own; a step's time is the fastest
of `--steps` (the median is kept in the JSON). Inside that process, just
before and just after the timed steps, the machine's dense matmul rate is measured: the limit a step
could reach is its FLOPs divided by that rate (the mean of the two). Beside each figure, the load:
the process's CPU time over wall time during the timed steps, per thread (1.00: it had its threads'
cores to itself; lower: other work took them, and the figure is noisy).

`--trees before=PATH after=src` times every configuration once per source tree (each `PATH` a
checkout's `src`, put first on the child's PYTHONPATH), interleaved, so the before/after ratio of
each configuration comes from one run under the same load.

`--options` times the engine's options (docs/beyond.md) beside the plain method, each in its own
process, interleaved per (method, IPC): factor images, a pool of trained networks (with and
without interpolation; one network trained one epoch on this random problem, built once before
the timing: a trained network costs a step what a random one does), calibration, each distance,
and all of them at once; the table's "× plain" is each option's time over the plain step's, and
"network ms" the time a step takes to make its network (drawn at random, or a pool member loaded
and mixed), the fastest of 5.

    python benchmarks/distill_speed.py                      # fp32, every method at IPC 1/10/50
    python benchmarks/distill_speed.py --ipc 10 --methods atom --steps 5
    python benchmarks/distill_speed.py --trees before=../perf-before/src after=src --steps 3
    python benchmarks/distill_speed.py --methods dm atom --ipc 1 10 --options all --no-bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch
from common import best_of, child, cpu_seconds, distiller, matmul_gflops, synthetic_problem

POOL = "{pool}"  # stands for the benchmark's pool folder in OPTIONS
# the engine's options, as distillation settings over the method's preset
OPTIONS = {
    "plain": {},
    "factor 2": {"factor": 2},
    "pool": {"pool_dir": POOL},
    "pool + interp": {"pool_dir": POOL, "pool_interp": True},
    "calib": {"pool_dir": POOL, "calib": 1.0},
    "mean-cov": {"distance": "mean-cov"},
    "mmd": {"distance": "mmd"},
    "cf": {"distance": "cf"},
    "all (factor 2, pool + interp, calib, cf)": {
        "factor": 2, "pool_dir": POOL, "pool_interp": True, "calib": 1.0, "distance": "cf",
    },
}  # fmt: skip


def build_pool(folder: str) -> str:
    """One ConvNet trained one epoch on `synthetic_problem`, as a pool the options can name."""
    from atomdd.pool import build
    from atomdd.settings import PoolSettings

    settings = PoolSettings("random32", zca=False, members=1, epochs=1, snapshot_every=1)
    return str(build(settings, folder, data=synthetic_problem())[0])


def machine_rate(precision: str) -> float:
    if precision == "fp32":
        return matmul_gflops("cpu", torch.float32, 2048, reps=8)
    return matmul_gflops("cpu", torch.bfloat16, 512, reps=3)


def one(
    method: str,
    ipc: int,
    precision: str,
    fused: bool,
    tuned: bool,
    steps: int,
    warmup: int,
    threads: int,
    option: str = "plain",
    pool: str = "",
) -> dict:
    """Time one configuration (run in a child process), between two measurements of the matmul rate."""
    torch.set_num_threads(threads)
    from atomdd.hardware import tune_cpu_allocator

    if tuned:
        tune_cpu_allocator()
    from torch.utils.flop_counter import FlopCounterMode

    settings = {k: pool if v == POOL else v for k, v in OPTIONS[option].items()}
    d = distiller("digits", ipc, method, iterations=warmup + steps, fused=fused, **settings)
    # measure bf16 even where it is slow, to show why it is not the default (the step reads the task's)
    d.precision = precision
    d.task = replace(d.task, precision=precision)
    for _ in range(warmup):
        d.step()
    rate_before = machine_rate(precision)
    times = []
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        t = time.perf_counter()
        d.step()  # the step a run takes
        times.append(time.perf_counter() - t)
    load = (cpu_seconds() - cpu) / (time.perf_counter() - wall) / threads
    rate_after = machine_rate(precision)
    network_s = best_of(lambda: d.network(d.steps_done), 5)  # a step's network: drawn, or a pool's loaded
    counter = FlopCounterMode(display=False)
    with counter:
        d.loss_and_grad(0)
    sec = min(times)  # the least disturbed step, as the matmul rate is the least disturbed product
    flops = counter.get_total_flops()
    rate = (rate_before + rate_after) / 2
    return {
        "method": method,
        "ipc": ipc,
        "option": option,
        "precision": precision,
        "loop": "fused" if fused else "per-class",
        "allocator": "tuned" if tuned else "glibc default",
        "s_per_step": sec,
        "median_s_per_step": statistics.median(times),
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / sec / 1e9,
        "matmul_gflops_before": rate_before,
        "matmul_gflops_after": rate_after,
        "machine_gflops": rate,
        "limit_s_per_step": flops / 1e9 / rate,
        "fraction_of_limit": flops / 1e9 / rate / sec,
        "load": load,
        "network_ms": 1000 * network_s,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batch_real": d.task.batch_real,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="+", default=["atom", "atom-channel", "datadam", "dm"])
    ap.add_argument(
        "--baseline", nargs="+", default=[], help="methods also timed in bf16, per class, untuned allocator"
    )
    ap.add_argument("--no-bf16", dest="bf16", action="store_const", const=[], default=[True])
    ap.add_argument(
        "--options",
        nargs="*",
        default=[],
        help=f"engine options beside the plain step: {' | '.join(OPTIONS)} | all",
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trees", nargs="+", default=[], metavar="NAME=SRC", help="source trees to interleave")
    ap.add_argument("--json", default="benchmarks/results/distill_speed.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return

    trees = [t.split("=", 1) for t in args.trees] or [["this", None]]
    options = [o for o in OPTIONS if o != "plain"] if args.options == ["all"] else args.options
    if unknown := sorted(set(options) - set(OPTIONS)):
        ap.error(f"unknown option(s) {unknown}; choose from {', '.join(OPTIONS)} or all")
    scratch = tempfile.TemporaryDirectory(prefix="atomdd-pool-")  # removed when the benchmark exits
    pool = build_pool(scratch.name) if options else ""
    jobs = [
        dict(method=m, ipc=i, precision="fp32", fused=True, tuned=True, option=o, pool=pool)
        for i in args.ipc
        for m in args.methods
        for o in ["plain", *(o for o in options if o != "plain")]
    ]
    for i in args.ipc:
        for m in args.baseline:  # the same step in bf16, and before each optimisation, side by side
            jobs += [dict(method=m, ipc=i, precision="bf16", fused=True, tuned=True) for _ in args.bf16]
            jobs += [
                dict(method=m, ipc=i, precision="fp32", fused=False, tuned=True),
                dict(method=m, ipc=i, precision="fp32", fused=True, tuned=False),
            ]
    rows = []
    for job in jobs:
        steps = args.steps if job["precision"] == "fp32" else max(1, args.steps // 3)
        for name, tree in trees:  # interleaved: each configuration's trees run back to back
            row = child(
                __file__, job | {"steps": steps, "warmup": args.warmup, "threads": args.threads}, tree
            )
            row["tree"] = name
            rows.append(row)
            print(
                f"{name:<7} {row['method']:<13} ipc {row['ipc']:>2} {row['option']:<14} {row['precision']} "
                f"{row['loop']:<9} "
                f"{row['allocator']:<13} {row['s_per_step']:.3f} s/step  {row['gflop_per_step']:.1f} GFLOP  "
                f"{row['achieved_gflops']:.0f}/{row['machine_gflops']:.0f} GFLOP/s "
                f"({100 * row['fraction_of_limit']:.0f} %)  load {row['load']:.2f}  "
                f"peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
    from atomdd.io import versions, write_json

    write_json(args.json, {"rows": rows, "trees": dict(trees), "versions": versions(), "command": sys.argv})
    print_table(rows, [name for name, _ in trees])


def print_table(rows: list[dict], trees: list[str]) -> None:
    """One line per configuration and tree; with two trees, the first's time over the second's; an
    option's time over its method's plain step (same IPC and tree)."""
    print(
        "\n| method | IPC | option | precision | loop | allocator | tree | s/step | GFLOP/step | "
        "achieved GFLOP/s | matmul GFLOP/s (before / after) | % of limit | load | peak MB | speed-up | "
        "× plain | network ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first: dict[tuple, float] = {}
    plain: dict[tuple, float] = {}
    for r in rows:
        key = (r["method"], r["ipc"], r["option"], r["precision"], r["loop"], r["allocator"])
        first.setdefault(key, r["s_per_step"])
        ratio = f"{first[key] / r['s_per_step']:.2f}×" if len(trees) > 1 else "–"
        if r["option"] == "plain":
            plain[(r["method"], r["ipc"], r["tree"])] = r["s_per_step"]
        base = plain.get((r["method"], r["ipc"], r["tree"]))
        cost = f"{r['s_per_step'] / base:.2f}" if base and r["option"] != "plain" else "–"
        print(
            f"| {r['method']} | {r['ipc']} | {r['option']} | {r['precision']} | {r['loop']} | "
            f"{r['allocator']} | {r['tree']} | "
            f"{r['s_per_step']:.3f} | {r['gflop_per_step']:.1f} | {r['achieved_gflops']:.0f} | "
            f"{r['matmul_gflops_before']:.0f} / {r['matmul_gflops_after']:.0f} | "
            f"{100 * r['fraction_of_limit']:.0f} % | {r['load']:.2f} | {r['peak_mb']:.0f} | {ratio} | "
            f"{cost} | {r.get('network_ms', float('nan')):.1f} |"
        )


if __name__ == "__main__":
    main()
