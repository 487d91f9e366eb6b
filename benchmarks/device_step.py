"""Seconds per distillation step and peak device memory on one device (a GPU, for
`device_check.sh`): CIFAR-shaped (10 classes of 3×32×32 random pixels: speed does not depend on
content), each method's CIFAR preset without ZCA (a one-off fit, not part of a step), fp32, the
whole step (network draw, real and synthetic passes, backward, optimiser) as a run makes it.

    python benchmarks/device_step.py --device cuda                  # atom, datadam, dm × IPC 1/10/50
    python benchmarks/device_step.py --device cpu --ipc 1 --steps 1 --warmup 0 --methods atom  # plumbing
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import distiller, sync


def measure(method: str, ipc: int, device: str, steps: int, warmup: int) -> dict:
    d = distiller("cifar10", ipc, method, zca=False, device=device, iterations=warmup + steps)
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    times = []
    for _ in range(warmup + steps):
        sync(d.device)
        t = time.perf_counter()
        d.step()  # the step a run takes
        sync(d.device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(d.device) / 2**20 if d.device.type == "cuda" else None
    return {
        "method": method,
        "ipc": ipc,
        "device": str(d.device),
        "s_per_step": statistics.median(times[warmup:]),
        "peak_device_mb": peak,
        "batch_real": d.task.batch_real,
        "steps": steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", nargs="+", default=["atom", "datadam", "dm"])
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/results/device_step.json")
    args = ap.parse_args()
    print("| method | IPC | s/step | peak device memory (MiB) |\n|---|---|---|---|", flush=True)
    rows = []
    for ipc in args.ipc:
        for method in args.methods:
            row = measure(method, ipc, args.device, args.steps, args.warmup)
            rows.append(row)
            peak = f"{row['peak_device_mb']:.0f}" if row["peak_device_mb"] is not None else "–"
            print(f"| {method} | {ipc} | {row['s_per_step']:.4f} | {peak} |", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
