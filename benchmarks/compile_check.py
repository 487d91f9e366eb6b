"""Does torch.compile speed up a distillation step? ATOM at IPC 10 on CIFAR-shaped random data
(ConvNet-3 width 128), the network's feature pass compiled (inductor) or eager, 2 threads, one
configuration per process; prints each step's seconds (the first includes the compile).

    python benchmarks/compile_check.py eager
    python benchmarks/compile_check.py compile          # the engine's own 2×2 pool (a graph break)
    python benchmarks/compile_check.py compile-plain    # PyTorch's pool: one graph per chunk size
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F


def main(mode: str, steps: int = 8) -> None:
    from common import distiller

    from atomdd.hardware import tune_cpu_allocator
    from atomdd.models import layers

    torch.set_num_threads(2)
    tune_cpu_allocator()
    d = distiller("digits", 10, "atom", iterations=steps)
    if mode.startswith("compile"):
        if mode == "compile-plain":
            layers.AvgPool2x2.forward = lambda self, x: F.avg_pool2d(x, 2)
        cls = type(d.task.network(0))
        eager = cls.features
        compiled = torch.compile(lambda net, x: eager(net, x), dynamic=False)
        cls.features = lambda self, x: compiled(self, x)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        d.step()  # the step a run takes
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    spread = f"{rest[0]:.3f}–{rest[-1]:.3f} s (median {rest[len(rest) // 2]:.3f})"
    print(f"{mode}: first step {times[0]:.2f} s, then {spread}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eager")
