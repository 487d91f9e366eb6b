"""atomdd's step against the published codes' own steps, side by side in one process, per CPU kind:
`datadam-code` against DataDAM's main_DataDAM.py and `dm-code` against DM's main_DM.py, on the same
real CIFAR-10 images (each preset's ZCA or none) from the same initial pixels.

The published steps run from checkouts given by `--datadam-code` and `--dm-code`
(`common.published_step`; nothing of them is kept here). For each ISA (`native`, and `avx2`:
PyTorch's, oneDNN's and MKL's kernels held to AVX2), method and IPC, one child process with
`--threads` threads and glibc's allocator as `--allocator` says (`run`, the default: tuned as
`atomdd distill` tunes it, for both codes, process-wide; `default`: glibc's own, as the published
scripts run): one warm-up step of each, then `--rounds` rounds of `--steps` published steps and
`--steps` of atomdd's `Distiller.step()`, interleaved so that a change of load falls on both; the
median step of each is compared. Then the evaluation's training epoch on the initial set (IPC × 10
images: one batch or a few), the published code's `utils.epoch` (its ConvNet's norm and batch:
DataDAM's batch-norm ConvNet at batch 64, DM's instance-norm one at 256) against atomdd's training
loop at the same protocol, `--epochs` of each, the median compared. The load beside each figure is
the child's CPU time over its wall time per thread while timed (1.00: the cores were its own).

    git --git-dir PATH/DataDAM.git archive HEAD | tar -x -C /tmp/datadam   # a checkout of each code
    python benchmarks/published_speed.py --data-root DATA --datadam-code /tmp/datadam --dm-code /tmp/dm
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from common import ISAS, PUBLISHED_EVALUATION, child, cpu_seconds, published_epoch, published_step

PRESETS = {"datadam": "datadam-code", "dm": "dm-code"}


def one(job: dict) -> dict:
    """One (method, IPC) in this process: the published step and ours, interleaved."""
    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller
    from atomdd.hardware import tune_cpu_allocator

    torch.set_num_threads(job["threads"])
    if job["allocator"] == "run":  # as `atomdd distill` sets it up; process-wide, so both sides get it
        tune_cpu_allocator()
    d = Distiller(make_config("cifar10", job["ipc"], PRESETS[job["method"]], data_root=job["data_root"]))
    real = torch.cat([d.prep(c) for c in d.data.train_images.split(5000)])
    syn = d.syn.detach().clone()
    published = published_step(
        Path(job["code"]), job["method"], real, d.data.train_labels, syn, d.cfg.batch_real
    )
    times: dict[str, list[float]] = {"published": [], "atomdd": []}
    calls = {"published": published, "atomdd": d.step}
    for call in calls.values():  # warm-up: first-call allocations and kernel choice
        call()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for _ in range(job["rounds"]):
        for who, call in calls.items():
            for _ in range(job["steps"]):
                t = time.perf_counter()
                call()
                times[who].append(time.perf_counter() - t)
    load = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0) / job["threads"]
    med = {who: statistics.median(ts) for who, ts in times.items()}
    epochs = evaluation_epochs(job, syn.detach(), d.labels)
    return {
        **{k: job[k] for k in ("isa", "method", "ipc", "threads", "allocator")},
        "capability": torch.backends.cpu.get_cpu_capability(),
        "published_s": med["published"],
        "atomdd_s": med["atomdd"],
        "ratio": med["published"] / med["atomdd"],
        "load": load,
        "steps": {who: len(ts) for who, ts in times.items()},
        **epochs,
    }


def evaluation_epochs(job: dict, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The evaluation's training epoch on the set (IPC × 10 images: one or a few batches), the
    published code's `epoch` against atomdd's training loop at the same protocol (its ConvNet's norm
    and batch, DSA, SGD), `--epochs` of each after two, the median epoch of each, the load beside."""
    from atomdd import train

    batch, model = PUBLISHED_EVALUATION[job["method"]]
    theirs = published_epoch(Path(job["code"]), job["method"], images, labels)
    ends: list[float] = []
    cfg = train.TrainConfig(epochs=job["epochs"] + 2, repeats=1, batch_size=batch)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    ends.append(time.perf_counter())
    stamp = lambda *_: ends.append(time.perf_counter())  # noqa: E731 (after every epoch)
    train.train_models(model, images, labels, int(labels.max()) + 1, cfg, on_epoch=stamp)
    ours = statistics.median(b - a for a, b in list(itertools.pairwise(ends))[2:])
    for _ in range(2):
        theirs()
    published = []
    for _ in range(job["epochs"]):
        t = time.perf_counter()
        theirs()
        published.append(time.perf_counter() - t)
    load = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0) / job["threads"]
    pub = statistics.median(published)
    return {"epoch_published_s": pub, "epoch_atomdd_s": ours, "epoch_ratio": pub / ours, "epoch_load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="holds cifar-10-batches-py/")
    ap.add_argument("--datadam-code", type=Path, help="a checkout of the published DataDAM code")
    ap.add_argument("--dm-code", type=Path, help="a checkout of the published DC/DSA/DM code")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--isa", nargs="+", choices=sorted(ISAS), default=["native", "avx2"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20, help="evaluation epochs timed of each")
    ap.add_argument(
        "--allocator",
        choices=("run", "default"),
        default="run",
        help="run: glibc's allocator as `atomdd distill` tunes it (hardware.tune_cpu_allocator), for "
        "both steps; default: glibc's own, as the published scripts run",
    )
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(json.loads(args.child))))
        return
    codes = {"datadam": args.datadam_code, "dm": args.dm_code}
    if not args.data_root:
        raise SystemExit("give --data-root, the folder holding cifar-10-batches-py/")
    if not any(codes.values()):
        raise SystemExit("give --datadam-code, --dm-code or both: checkouts of the published codes")
    rows = []
    print(
        "| ISA | method | IPC | published s/step | atomdd s/step | published / atomdd | load "
        "| published s/epoch | atomdd s/epoch | published / atomdd | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for isa in args.isa:
        for method, code in codes.items():
            for ipc in args.ipc if code else ():
                job = {"isa": isa, "method": method, "ipc": ipc, "threads": args.threads}
                job |= {
                    "steps": args.steps,
                    "rounds": args.rounds,
                    "epochs": args.epochs,
                    "data_root": args.data_root,
                    "allocator": args.allocator,
                }
                env = ISAS[isa] | {"OMP_NUM_THREADS": str(args.threads)}
                r = child(__file__, job | {"code": str(code.resolve())}, env=env)
                rows.append(r)
                print(
                    f"| {isa} ({r['capability']}) | {PRESETS[method]} | {ipc} | {r['published_s']:.3f} | "
                    f"{r['atomdd_s']:.3f} | {r['ratio']:.2f} | {r['load']:.2f} | "
                    f"{r['epoch_published_s']:.4f} | {r['epoch_atomdd_s']:.4f} | {r['epoch_ratio']:.2f} | "
                    f"{r['epoch_load']:.2f} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
