"""The step a run takes, timed inside the run: `Distiller.run()` (the loop `atomdd distill` runs, its
logging, NaN check, progress and checkpoint cadence at their defaults) against the pure
`Distiller.step()` in the same process, per CPU kind, with where the time goes by operator.

For each ISA (`native`: what PyTorch picks on this CPU; `avx2`: PyTorch's, oneDNN's and MKL's
kernels held to AVX2, what an AVX2-only laptop or server runs), method and IPC, one child process:
the real data (CIFAR-10 from `--data-root`, its preset's ZCA) or, without `--data-root`, the speed
benchmarks' random CIFAR-shaped problem; then `--rounds` rounds of `--steps` pure steps and the run
loop for `--steps` steps (each a fresh `run()` into a new folder; a step's time there is the gap
between the ends of two steps, so the loop's own work is inside it), with `--steps` pure steps
between them that run PyTorch's ops in place of the fused block kernel (`ATOMDD_NO_FUSED=1`, the
code before it: the "unfused" column), interleaved so that a change of load falls on all three; the
medians are compared. The machine's dense matmul rate is measured before and
after; the limit is the step's FLOPs over it. The load beside each figure is CPU time over wall time
per thread during the timed steps (1.00: the cores were its own). A torch profile of `--profile`
pure steps gives the self CPU time by operator. `--trees before=PATH after=src` runs each
configuration once per source tree (a checkout's `src` first on PYTHONPATH), back to back, and adds
each later tree's speed-up over the first.

    python benchmarks/loop_speed.py --data-root ../shared/data --ipc 1 10 --threads 1
    python benchmarks/loop_speed.py --isa avx2 --methods atom --ipc 10 --steps 5
    python benchmarks/loop_speed.py --data-root ../shared/data --trees before=../before/src after=src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch
from common import ISAS, child, cpu_seconds, matmul_gflops, synthetic_problem

from atomdd.models import fused
from atomdd.models.fused import DISABLE_ENV


def _distiller(method: str, ipc: int, iterations: int, data_root: str | None):
    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    if data_root:
        cfg = make_config("cifar10", ipc, method, iterations=iterations, data_root=data_root)
        return Distiller(cfg)
    cfg = make_config("cifar10", ipc, method, iterations=iterations, zca=False)
    return Distiller(replace(cfg, dataset="random32"), data=synthetic_problem())


def _profile(d, steps: int) -> list[dict]:
    """Self CPU time by operator over `steps` pure steps, largest first (the top 12)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            d.step()
    rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total = sum(r[1] for r in rows)
    rows.sort(key=lambda r: -r[1])
    return [
        {"op": k, "share": t / total, "ms_per_step": t / 1000 / steps, "calls": c} for k, t, c in rows[:12]
    ]


def one(
    method: str,
    ipc: int,
    steps: int,
    rounds: int,
    warmup: int,
    threads: int,
    data_root: str | None,
    profile: int,
) -> dict:
    """Time one configuration in this (child) process: `rounds` of pure steps then the run loop."""
    torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode

    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()  # as the CLI does
    d = _distiller(method, ipc, warmup + 2 * rounds * steps, data_root)
    for _ in range(warmup):
        d.step()
    rate_before = matmul_gflops()
    pure: list[float] = []
    unfused: list[float] = []  # the pure step with PyTorch's ops in place of the fused kernel
    loop: list[float] = []
    ends: list[float] = []
    step = d.step

    def timed_step(stop: object = None):  # the loop's own step, its end stamped
        out = step(stop)
        ends.append(time.perf_counter())
        return out

    wall, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):  # interleaved, so a change of load falls on both
            for _ in range(steps):
                t = time.perf_counter()
                d.step()
                pure.append(time.perf_counter() - t)
            os.environ[DISABLE_ENV] = "1"
            for _ in range(steps):
                t = time.perf_counter()
                d.step()
                unfused.append(time.perf_counter() - t)
            del os.environ[DISABLE_ENV]
            d.cfg = replace(d.cfg, iterations=d.steps_done + steps)
            d.step, ends = timed_step, [time.perf_counter()]
            d.run(f"{tmp}/{r}", quiet=True)
            d.step = step
            # the gap before the first step holds run()'s setup (the lock, run.json): not a step
            loop += [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]
    load = (cpu_seconds() - cpu) / (time.perf_counter() - wall) / threads
    rate_after = matmul_gflops()
    counter = FlopCounterMode(display=False)
    with counter:
        d.loss_and_grad(0)
    flops, rate = counter.get_total_flops(), (rate_before + rate_after) / 2
    pure_s, loop_s = statistics.median(pure), statistics.median(loop)
    return {
        "isa": torch.backends.cpu.get_cpu_capability(),
        "method": method,
        "ipc": ipc,
        "data": "cifar10" if data_root else "random32",
        "pure_s": pure_s,
        "unfused_s": statistics.median(unfused),
        "fused_speedup": statistics.median(unfused) / pure_s,
        "fused_kernel": fused.library() is not None,
        "loop_s": loop_s,
        "loop_over_pure": loop_s / pure_s,
        "gflop_per_step": flops / 1e9,
        "matmul_gflops": rate,
        "limit_s": flops / 1e9 / rate,
        "pure_fraction_of_limit": flops / 1e9 / rate / pure_s,
        "loop_fraction_of_limit": flops / 1e9 / rate / loop_s,
        "load": load,
        "threads": threads,
        "pure_all": pure,
        "unfused_all": unfused,
        "loop_all": loop,
        "profile": _profile(d, profile) if profile else [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", nargs="+", default=list(ISAS), choices=list(ISAS))
    ap.add_argument("--methods", nargs="+", default=["atom", "datadam", "dm"])
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--steps", type=int, default=4, help="steps of each kind a round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", type=int, default=3, help="pure steps profiled by operator (0: none)")
    ap.add_argument("--data-root", help="CIFAR-10's folder; without it, a random CIFAR-shaped problem")
    ap.add_argument("--json", default="benchmarks/results/loop_speed.json")
    ap.add_argument("--trees", nargs="+", default=[], metavar="NAME=SRC", help="source trees to interleave")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return
    trees = [t.split("=", 1) for t in args.trees] or [("this", None)]
    rows = []
    for ipc in args.ipc:
        for method in args.methods:
            for isa in args.isa:  # interleaved: each configuration's ISAs and trees back to back
                for tree, src in trees:
                    job = dict(method=method, ipc=ipc, steps=args.steps, rounds=args.rounds)
                    job |= dict(warmup=args.warmup, threads=args.threads, data_root=args.data_root)
                    job |= {"profile": args.profile}
                    row = child(__file__, job, tree=src, env=ISAS[isa]) | {"isa_asked": isa, "tree": tree}
                    rows.append(row)
                    _report(row)
                    with open(args.json, "w") as f:  # after every row: a long run keeps what it measured
                        json.dump(rows, f, indent=1)
    print_tables(rows)


def _report(row: dict) -> None:
    print(
        f"{row['isa_asked']:<6} ({row['isa']}) {row['tree']} {row['method']:<8} ipc {row['ipc']:>2}: "
        f"unfused {row['unfused_s']:.3f} s, "
        f"pure {row['pure_s']:.3f} s ({row['fused_speedup']:.2f}×), loop "
        f"{row['loop_s']:.3f} s ({row['loop_over_pure']:.3f}×), limit {row['limit_s']:.3f} s "
        f"({100 * row['pure_fraction_of_limit']:.0f} % / {100 * row['loop_fraction_of_limit']:.0f} %), "
        f"load {row['load']:.2f}",
        file=sys.stderr,
    )


def print_tables(rows: list[dict]) -> None:
    """A table per ISA, with the trees' ratios where there are several, then each configuration's
    top operators."""
    for isa in dict.fromkeys(r["isa_asked"] for r in rows):
        mine = [r for r in rows if r["isa_asked"] == isa]
        print(f"\n### {isa} (PyTorch capability {mine[0]['isa']}, {mine[0]['threads']} thread(s))\n")
        print(
            "| tree | method | IPC | data | unfused s/step | pure s/step | speed-up | run loop s/step | "
            "loop / pure | limit s | % of limit (unfused / pure / loop) | matmul GFLOP/s | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in mine:
            print(
                f"| {r['tree']} | {r['method']} | {r['ipc']} | {r['data']} | {r['unfused_s']:.3f} | "
                f"{r['pure_s']:.3f} | {r['fused_speedup']:.2f}× | {r['loop_s']:.3f} | "
                f"{r['loop_over_pure']:.3f} | {r['limit_s']:.3f} | "
                f"{100 * r['limit_s'] / r['unfused_s']:.0f} / {100 * r['pure_fraction_of_limit']:.0f} / "
                f"{100 * r['loop_fraction_of_limit']:.0f} | {r['matmul_gflops']:.0f} | {r['load']:.2f} |"
            )
        trees = list(dict.fromkeys(r["tree"] for r in mine))
        if len(trees) > 1:  # each later tree's speed-up over the first, the same configuration
            heads = " | ".join(f"{t} over {trees[0]} (pure / loop)" for t in trees[1:])
            print(f"\n| method | IPC | {heads} |")
            print("|---|---|" + "---|" * (len(trees) - 1))
            for first in (r for r in mine if r["tree"] == trees[0]):
                key = (first["method"], first["ipc"])
                same = {r["tree"]: r for r in mine if (r["method"], r["ipc"]) == key}
                cells = [
                    f"{first['pure_s'] / same[t]['pure_s']:.2f}× / {first['loop_s'] / same[t]['loop_s']:.2f}×"
                    for t in trees[1:]
                ]
                print(f"| {first['method']} | {first['ipc']} | {' | '.join(cells)} |")
    for r in rows:
        if r["profile"]:
            ops = ", ".join(f"{p['op']} {100 * p['share']:.0f} %" for p in r["profile"][:8])
            print(f"\n{r['isa_asked']} {r['tree']} {r['method']} IPC {r['ipc']}: {ops}")


if __name__ == "__main__":
    main()
