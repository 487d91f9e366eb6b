"""What two ranks can gain at most, without torch.distributed, single-thread processes:

- the work: the step of a run over half the classes (a rank's share: the same work per class)
  against one over all of them, interleaved in one process (so that both see the same machine),
  step by step;
- the machine: a half-class process alone against two of them side by side (do they slow each other
  on shared cores and memory?).

Complements benchmarks/scale.py.

    python benchmarks/scale_split.py --classes 10 --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import children, distiller


def child(owns: list[int], steps: int) -> dict:
    """Median seconds of a step of a run over `own` classes (a rank's share of the whole: the
    same work per class), for each `own`, taken in turn."""
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    runs = {own: distiller("cifar10", 10, "atom", own, zca=False, device="cpu") for own in owns}

    def step(own: int) -> float:
        t = time.perf_counter()
        runs[own].step()  # the step a run takes
        return time.perf_counter() - t

    for own in owns:
        step(own)
    times: dict[int, list[float]] = {own: [] for own in owns}
    for _ in range(steps):
        for own in owns:
            times[own].append(step(own))
    return {str(own): statistics.median(t) for own, t in times.items()}


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
    job = {"steps": args.steps}
    (both,) = children(__file__, [job | {"owns": [n, half]}])
    whole, part = both[str(n)], both[str(half)]
    (alone,) = children(__file__, [job | {"owns": [half]}])
    pair = [r[str(half)] for r in children(__file__, [job | {"owns": [half]}] * 2)]
    print(f"one process, 1 thread, in turn: {n} classes {whole:.3f} s/step, {half} classes {part:.3f} s/step")
    print(f"  the work splits {whole / part:.2f}× (the ceiling of 2 ranks with a core each)")
    print(
        f"{half} classes alone: {alone[str(half)]:.3f} s/step; two processes side by side: "
        + ", ".join(f"{t:.3f}" for t in pair)
        + f" s/step (slowdown {max(pair) / alone[str(half)]:.2f}×)"
    )


if __name__ == "__main__":
    main()
