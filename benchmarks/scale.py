"""Distillation step time on 1 rank vs 2 ranks (torchrun-style processes, gloo, 1 thread each), side
by side in one run: CIFAR-shaped (3×32×32, random pixels: speed does not depend on content), ATOM's
CIFAR preset (ConvNet-3, 64 real images per class and step) at IPC 10, with 10 and 100 classes.

Each rank computes its own classes only, so the work per step is split and the ranks exchange one
all-reduce of a few numbers per step; the throughput ratio is (1-rank s/step) / (2-rank s/step).
Beside each figure: each rank's CPU seconds per wall second over the timed steps (1.0: it had a
core to itself; less: it waited, on the other rank or on a busy machine) and the load average, so
a figure taken on a shared machine can be read for what it is; and the ratio of CPU seconds per
step (1 rank's over the busiest rank's of 2): the throughput ratio 2 ranks would reach with a core
each, a projection from CPU time, not a measured wall time.

    python benchmarks/scale.py                          # 10 and 100 classes (a few minutes on 2 cores)
    python benchmarks/scale.py --classes 10 --steps 3   # quicker
    python benchmarks/scale.py --classes 10 --rounds 5  # 5 pairs in turn: the median ratio
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import distiller, launch


def rank_main(job: dict) -> None:
    """One rank: build the run, warm up, time `steps` steps (started together), report on rank 0."""
    from atomdd import parallel
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(job["threads"])
    d = distiller(
        "cifar10", job["ipc"], job["method"], job["classes"], job["per_class"], zca=False, device="cpu"
    )
    for _ in range(job["warmup"]):
        d.step()  # the step a run takes, its per-step all-reduce included
    parallel.all_sum(torch.zeros(1), "the start barrier")
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(job["steps"]):
        d.step()
    parallel.all_sum(torch.zeros(1), "the end barrier")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mine = {"classes": [d.shards.own.start, d.shards.own.stop], "cpu_per_wall": cpu / wall}
    mine["cpu_s_per_step"] = cpu / job["steps"]
    ranks = parallel.gather_objects(mine, "the report gather")
    if parallel.is_main_process():
        print(json.dumps({"s_per_step": wall / job["steps"], "ranks": ranks}))
    parallel.leave()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--method", default="atom")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--rounds", type=int, default=1, help="1-rank/2-rank pairs per class count, in turn")
    ap.add_argument("--json", default="benchmarks/results/scale.json")
    ap.add_argument("--rank-job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_job:
        rank_main(json.loads(args.rank_job))
        return
    rows = []
    print(
        f"{args.method}, IPC {args.ipc}, CIFAR-shaped, {args.threads} thread(s) per rank, {args.steps} steps"
    )
    print("| classes | ranks | s/step | throughput × | CPU/wall by rank | CPU-time ratio | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for k, round_ in itertools.product(args.classes, range(args.rounds)):
        base, cpu_base = None, 0.0
        for world in (1, 2):
            job = vars(args) | {"classes": k, "per_class": 300 if k <= 10 else 100}
            job = {
                key: job[key]
                for key in ("classes", "per_class", "ipc", "method", "steps", "warmup", "threads")
            }
            load = os.getloadavg()[0]
            got = launch(world, job, __file__)
            base = base or got["s_per_step"]
            row = job | {"round": round_, "load_before": load, "load_after": os.getloadavg()[0]}
            row |= got  # with "ranks": each rank's figures
            row["throughput_ratio"] = base / got["s_per_step"]
            cpu_base = cpu_base if world > 1 else got["ranks"][0]["cpu_s_per_step"]
            row["cpu_ratio"] = cpu_base / max(r["cpu_s_per_step"] for r in got["ranks"])
            rows.append(row)
            cpu = ", ".join(f"{r['cpu_per_wall']:.2f}" for r in got["ranks"])
            print(
                f"| {k} | {world} | {got['s_per_step']:.3f} | {row['throughput_ratio']:.2f} | {cpu} | "
                f"{row['cpu_ratio']:.2f} | {load:.1f} → {row['load_after']:.1f} |",
                flush=True,
            )
    for k in args.classes:
        ratios = [r["throughput_ratio"] for r in rows if r["classes"] == k and len(r["ranks"]) == 2]
        each = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{k} classes, 2 ranks: {each} (median {statistics.median(ratios):.2f}×)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
    }
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
