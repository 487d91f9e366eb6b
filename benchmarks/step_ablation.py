"""Each of the step's rewritten operations against the plain PyTorch one it replaces, in one process.

The same distillation step (random 32×32 RGB, ConvNet-3 width 128) is timed with every rewrite on
("all"), with one of them put back to plain PyTorch at a time, and with all of them put back
("none"), the variants alternating step by step so that each sees the same load; per variant, the
fastest step and "all"'s time over it (below 1: the rewrite wins).

    python benchmarks/step_ablation.py --method atom --ipc 10 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import distiller

import atomdd.matching as matching
import atomdd.models.layers as layers
from atomdd.hardware import tune_cpu_allocator


def plain_power_sums(f: torch.Tensor, p: float, dims: list[tuple[int, ...]]) -> list[torch.Tensor]:
    powered = f.float().abs().pow(p) if p not in (2, 4) else f.float().square()
    powered = powered.square() if p == 4 else powered
    return [powered.sum(d) for d in dims]


PLAIN = {  # rewrite → (module, attribute, the plain PyTorch version)
    "pool": (layers, "avg_pool2x2", lambda x: F.avg_pool2d(x, 2)),
    "attention": (matching, "power_sums", plain_power_sums),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="atom")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    d = distiller("digits", args.ipc, args.method)
    ours = {name: getattr(mod, attr) for name, (mod, attr, _) in PLAIN.items()}
    variants = {"all": [], **{f"plain {n}": [n] for n in PLAIN}, "none": list(PLAIN)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for v, plain in variants.items():
            for name, (mod, attr, alt) in PLAIN.items():
                setattr(mod, attr, alt if name in plain else ours[name])
            t = time.perf_counter()
            d.step()  # the step a run takes
            if r:
                times[v].append(time.perf_counter() - t)
    best = {v: min(ts) for v, ts in times.items()}
    print(f"{args.method} IPC {args.ipc}, {args.threads} threads, {args.rounds} rounds")
    print("| variant | best s | median s | all / variant |\n|---|---|---|---|")
    for v, ts in times.items():
        print(f"| {v} | {best[v]:.3f} | {statistics.median(ts):.3f} | {best['all'] / best[v]:.2f} |")


if __name__ == "__main__":
    main()
