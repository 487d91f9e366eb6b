"""Each of the step's rewritten operations against the plain PyTorch one it replaces, in one process.

The same distillation step (random 32×32 RGB, ConvNet-3 width 128) is timed with every rewrite on
("all"), with one of them put back to plain PyTorch at a time, and with all of them put back
("none"), the variants alternating step by step so that each sees the same load; per variant, the
fastest step and the fastest step of what it is compared against over it (below 1: the rewrite
wins). The pool and attention rewrites run only without the fused block kernel, so their variants
put the kernel back too and are compared with the step without it.

    python benchmarks/step_ablation.py --method atom --ipc 10 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import distiller

import atomdd.matching as matching
import atomdd.models.layers as layers
from atomdd.hardware import tune_cpu_allocator
from atomdd.models.fused import DISABLE_ENV


def plain_power_sums(f: torch.Tensor, p: float, dims: list[tuple[int, ...]]) -> list[torch.Tensor]:
    powered = f.float().abs().pow(p) if p not in (2, 4) else f.float().square()
    powered = powered.square() if p == 4 else powered
    return [powered.sum(d) for d in dims]


def _swap(module, attribute: str, plain_version) -> Callable[[bool], None]:
    ours = getattr(module, attribute)
    return lambda plain: setattr(module, attribute, plain_version if plain else ours)


def _fused(plain: bool) -> None:
    if plain:
        os.environ[DISABLE_ENV] = "1"
    else:
        os.environ.pop(DISABLE_ENV, None)


PLAIN = {  # rewrite → put back to plain PyTorch (True) or not (False)
    "fused block kernel": _fused,
    "pool": _swap(layers, "avg_pool2x2", lambda x: F.avg_pool2d(x, 2)),
    "attention": _swap(matching, "power_sums", plain_power_sums),
}
# the pool and attention rewrites run only where the fused kernel does not: their variants put it
# back too, and are compared with the step without the kernel
INSIDE = {"pool": ["fused block kernel"], "attention": ["fused block kernel"]}


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
    variants = {"all": [], **{f"plain {n}": [n, *INSIDE.get(n, [])] for n in PLAIN}, "none": list(PLAIN)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for v, plain in variants.items():
            for name, put_back in PLAIN.items():
                put_back(name in plain)
            t = time.perf_counter()
            d.step()  # the step a run takes
            if r:
                times[v].append(time.perf_counter() - t)
    best = {v: min(ts) for v, ts in times.items()}
    print(f"{args.method} IPC {args.ipc}, {args.threads} threads, {args.rounds} rounds")
    print("| variant | best s | median s | against | that / variant |\n|---|---|---|---|---|")
    for v, ts in times.items():
        name = v.removeprefix("plain ")
        base = f"plain {INSIDE[name][0]}" if name in INSIDE else "all"
        print(f"| {v} | {best[v]:.3f} | {statistics.median(ts):.3f} | {base} | {best[base] / best[v]:.2f} |")


if __name__ == "__main__":
    main()
