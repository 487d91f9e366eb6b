"""What two ranks can gain at most, without torch.distributed, single-thread processes:

- the work: a step over half the classes against one over all of them, interleaved in one process
  (so that both see the same machine), step by step;
- the machine: a half-class process alone against two of them side by side (do they slow each other
  on shared cores and memory?).

Complements benchmarks/scale.py.

    python benchmarks/scale_split.py --classes 10 --steps 8
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


def child(classes: int, owns: list[int], steps: int) -> dict:
    """Median seconds of a step over the first `own` classes, for each `own`, taken in turn."""
    from distill_speed import synthetic_problem

    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller
    from atomdd.distillation.step import loss_and_grad
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    cfg = make_config("cifar10", 10, "atom", zca=False, device="cpu")
    d = Distiller(replace(cfg, dataset="random32"), data=synthetic_problem(classes))

    def step(s: int, own: int) -> float:
        t = time.perf_counter()
        d.opt.zero_grad(set_to_none=True)
        loss_and_grad(d.task, d.syn, s, range(own))
        d.opt.step()
        return time.perf_counter() - t

    for own in owns:
        step(0, own)
    times: dict[int, list[float]] = {own: [] for own in owns}
    for s in range(steps):
        for own in owns:
            times[own].append(step(1 + s, own))
    return {str(own): statistics.median(t) for own, t in times.items()}


def run(jobs: list[dict]) -> list[dict]:
    """The jobs as processes started together; their results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(j)], stdout=subprocess.PIPE, text=True
        )
        for j in jobs
    ]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    n, half = args.classes, args.classes // 2
    job = {"classes": n, "steps": args.steps}
    (both,) = run([job | {"owns": [n, half]}])
    whole, part = both[str(n)], both[str(half)]
    (alone,) = run([job | {"owns": [half]}])
    pair = [r[str(half)] for r in run([job | {"owns": [half]}] * 2)]
    print(f"one process, 1 thread, in turn: {n} classes {whole:.3f} s/step, {half} classes {part:.3f} s/step")
    print(f"  the work splits {whole / part:.2f}× (the ceiling of 2 ranks with a core each)")
    print(
        f"{half} classes alone: {alone[str(half)]:.3f} s/step; two processes side by side: "
        + ", ".join(f"{t:.3f}" for t in pair)
        + f" s/step (slowdown {max(pair) / alone[str(half)]:.2f}×)"
    )


if __name__ == "__main__":
    main()
