"""Seconds per distillation step, peak memory and achieved FLOP rate, against the machine's limit.

A 10-class 32×32 RGB problem (random pixels: speed does not depend on content), ConvNet-3 width 128,
each method at IPC 1/10/50 in fp32; for the baseline methods also bf16 autocast, the same loss
computed one class at a time (the published loop), and glibc's default allocator. Each
configuration runs in its own process so its peak memory is its own. In the same run, the
machine's dense matmul rate per dtype is measured: the limit a step could reach is its FLOPs
divided by that rate.

    python benchmarks/distill_speed.py                      # everything (tens of minutes on 2 cores)
    python benchmarks/distill_speed.py --ipc 10 --methods atom --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch


def matmul_gflops(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def synthetic_problem(per_class: int = 300):
    from atomdd.data import Dataset

    g = torch.Generator().manual_seed(0)
    n, k = per_class * 10, 10
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(k).repeat_interleave(per_class)
    return Dataset(
        "random32",
        images,
        labels,
        images[:100],
        labels[:100],
        tuple(map(str, range(k))),
        (0.5,) * 3,
        (0.25,) * 3,
    )


def one(method: str, ipc: int, precision: str, fused: bool, tuned: bool, steps: int, warmup: int) -> dict:
    """Time one configuration (run in a child process)."""
    import resource

    from atomdd.hardware import tune_cpu_allocator

    if tuned:
        tune_cpu_allocator()
    from torch.utils.flop_counter import FlopCounterMode

    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    cfg = make_config("digits", ipc, method, iterations=steps, fused=fused)
    d = Distiller(replace(cfg, dataset="random32"), data=synthetic_problem())
    # measure bf16 even where it is slow, to show why it is not the default (the step reads the task's)
    d.precision = precision
    d.task = replace(d.task, precision=precision)
    for s in range(warmup):
        d.opt.zero_grad(set_to_none=True)
        d.loss_and_grad(s)
    times = []
    for s in range(steps):
        t = time.perf_counter()
        d.opt.zero_grad(set_to_none=True)
        d.loss_and_grad(warmup + s)
        d.opt.step()
        times.append(time.perf_counter() - t)
    counter = FlopCounterMode(display=False)
    with counter:
        d.loss_and_grad(0)
    sec = statistics.median(times)
    flops = counter.get_total_flops()
    return {
        "method": method,
        "ipc": ipc,
        "precision": precision,
        "loop": "fused" if fused else "per-class",
        "allocator": "tuned" if tuned else "glibc default",
        "s_per_step": sec,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / sec / 1e9,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batch_real": d.task.batch_real,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="+", default=["atom", "atom-channel", "datadam", "dm"])
    ap.add_argument(
        "--baseline",
        nargs="+",
        default=["atom"],
        help="methods also timed in bf16, per class, untuned allocator",
    )
    ap.add_argument("--no-bf16", dest="bf16", action="store_const", const=[], default=[True])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="benchmarks/results/distill_speed.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return

    rates = {"fp32": matmul_gflops(torch.float32, 2048, 10), "bf16": matmul_gflops(torch.bfloat16, 512, 3)}
    jobs = [
        dict(method=m, ipc=i, precision="fp32", fused=True, tuned=True)
        for i in args.ipc
        for m in args.methods
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
        child = json.dumps(job | {"steps": steps, "warmup": args.warmup})
        out = subprocess.run([sys.executable, __file__, "--child", child], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"child failed: {job}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["machine_gflops"] = rates[row["precision"]]
        row["limit_s_per_step"] = row["gflop_per_step"] / rates[row["precision"]]
        row["fraction_of_limit"] = row["limit_s_per_step"] / row["s_per_step"]
        rows.append(row)
        print(
            f"{row['method']:<13} ipc {row['ipc']:>2} {row['precision']} {row['loop']:<9} "
            f"{row['allocator']:<13} "
            f"{row['s_per_step']:.3f} s/step  {row['gflop_per_step']:.1f} GFLOP  "
            f"{row['achieved_gflops']:.0f}/{row['machine_gflops']:.0f} GFLOP/s  peak {row['peak_mb']:.0f} MB",
            flush=True,
        )
    from atomdd.io import versions, write_json

    write_json(args.json, {"rows": rows, "matmul_gflops": rates, "versions": versions(), "command": sys.argv})
    print(
        "\n| method | IPC | precision | loop | allocator | s/step | GFLOP/step | achieved GFLOP/s | "
        "matmul GFLOP/s | % of limit | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['ipc']} | {r['precision']} | {r['loop']} | {r['allocator']} | "
            f"{r['s_per_step']:.3f} | "
            f"{r['gflop_per_step']:.1f} | {r['achieved_gflops']:.0f} | {r['machine_gflops']:.0f} | "
            f"{100 * r['fraction_of_limit']:.0f} % | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
