"""What two ranks can gain at most: an ATOM step over half the classes against one over all of them,
in one single-thread process (no torch.distributed), and two half-class processes side by side
(do they slow each other on shared cores and memory?). Complements benchmarks/scale.py.

    python benchmarks/scale_split.py --classes 10 --steps 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace

import torch


def child(classes: int, own: int, steps: int) -> dict:
    from distill_speed import synthetic_problem

    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller
    from atomdd.distillation.step import loss_and_grad
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    cfg = make_config("cifar10", 10, "atom", zca=False, device="cpu")
    d = Distiller(replace(cfg, dataset="random32"), data=synthetic_problem(classes))

    def step(s: int) -> None:
        d.opt.zero_grad(set_to_none=True)
        loss_and_grad(d.task, d.syn, s, range(own))
        d.opt.step()

    step(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(steps):
        step(1 + s)
    wall = time.perf_counter() - wall
    return {"own": own, "s_per_step": wall / steps, "cpu_per_wall": (time.process_time() - cpu) / wall}


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
    (whole,) = run([job | {"own": n}])
    (alone,) = run([job | {"own": half}])
    pair = run([job | {"own": half}] * 2)
    print(f"{n} classes, 1 process, 1 thread: {whole['s_per_step']:.3f} s/step")
    print(
        f"{half} classes alone: {alone['s_per_step']:.3f} s/step (ceiling of 2 ranks: "
        f"{whole['s_per_step'] / alone['s_per_step']:.2f}×)"
    )
    print(
        f"{half} classes, two processes side by side: "
        + ", ".join(f"{r['s_per_step']:.3f}" for r in pair)
        + " s/step "
        f"(slowdown {max(r['s_per_step'] for r in pair) / alone['s_per_step']:.2f}×)"
    )


if __name__ == "__main__":
    main()
