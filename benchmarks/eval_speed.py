"""Evaluation speed: N models trained together (vmap) vs one after another, fp32 vs bf16 autocast.

Problems shaped like a synthetic set: IPC images per class of 10 classes, random pixels (speed does
not depend on content), MNIST-shaped 28×28×1 and CIFAR-shaped 32×32×3; ConvNet-3 by default, the
full protocol step (DSA, SGD with momentum and weight decay). Per row: seconds per training epoch
of all N models (the fastest of the timed epochs, after a one-epoch warm-up; with several repeats
trained one after another, the fastest run's epoch × N), seconds to test them on `--test-images` images, the
FLOPs of an epoch (and of the test pass) over the seconds, against the machine's dense fp32 matmul
rate measured in the same process just before and just after the row (% of limit: the FLOPs over
that rate, over the seconds), and the load: the process's CPU time over wall time while timed, per
thread (1.00: its cores to itself). `--trees before=PATH after=src` runs every speed row once per
source tree (a checkout's `src` first on PYTHONPATH), in its own process, interleaved.
bf16 rows use `--bf16-ipc`, `--bf16-epochs` and `--bf16-test-images`: without AMX, bf16 is
emulated and far slower.
Accuracy: real digits (a random IPC-10 coreset), fp32 vs forced bf16, same seeds.
Pool (`--parts pool`, needs `--data-root` with CIFAR-10): one pool network trained one epoch on
CIFAR-10's 50 000 train images (`atomdd pool`'s build, without ZCA: whitening changes no cost),
against the evaluation's training of one model on a CIFAR-shaped IPC-10 set, per 1 000 training
images, in this process, the load beside each.
Diagnosis: each ConvNet convolution fwd+bwd as N separate convs vs one grouped conv (what vmap
lowers a stacked conv to), and group norm under vmap vs per model.

    python benchmarks/eval_speed.py --threads 1            # what the report quotes (~15 min, 2 cores)
    python benchmarks/eval_speed.py --parts pool --data-root ../shared/data --threads 2 --json P.json
    python benchmarks/eval_speed.py --ipc 10 --epochs 2 --precisions fp32 --parts speed
    python benchmarks/eval_speed.py --parts speed --precisions fp32 --paths sequential --shapes 32x3 \
        --ipc 1 10 50 --repeats 1 --threads 2 --trees before=../perf-before/src after=src
    benchmarks/device_check.sh                              # on a GPU: the same rows with --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import best_of, cpu_seconds, matmul_gflops, sync
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from atomdd import train
from atomdd.settings import TrainConfig


def test_flops(model_name: str, x: torch.Tensor, repeats: int) -> float:
    """FLOPs of testing `repeats` models on `x` (forward only)."""
    (model,) = train.init_models(model_name, x.shape[1], 10, x.shape[2], [0], 0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() * repeats


def problem(shape: tuple[int, int], ipc: int, n_test: int) -> tuple[torch.Tensor, ...]:
    c, s = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10 * ipc, c, s, s, generator=g)
    test = torch.randn(n_test, c, s, s, generator=g)
    return x, torch.arange(10).repeat_interleave(ipc), test, torch.randint(0, 10, (n_test,), generator=g)


def epoch_flops(model_name: str, x: torch.Tensor, repeats: int, batch: int) -> float:
    """Training FLOPs of one epoch of `repeats` models (convolutions and matmuls, fwd + bwd)."""
    (model,) = train.init_models(model_name, x.shape[1], 10, x.shape[2], [0], 0)
    total = 0.0
    for xb in x.split(batch):
        counter = FlopCounterMode(display=False)
        with counter:
            F.cross_entropy(model(xb), torch.zeros(len(xb), dtype=torch.long)).backward()
        total += counter.get_total_flops()
    return total * repeats


def time_row(
    args: argparse.Namespace, shape: tuple[int, int], ipc: int, precision: str, batched: bool
) -> dict:
    epochs = args.bf16_epochs if precision == "bf16" else args.epochs
    x, y, tx, ty = problem(shape, ipc, args.test_images)
    cfg = TrainConfig(
        epochs=1,
        repeats=args.repeats,
        device=args.device,
        precision=precision,
        batched=batched,
        seed=args.seed,
    )
    train.train_models(args.model, x, y, 10, cfg)  # warm-up: allocator, oneDNN primitives, CUDA kernels
    n_test = args.bf16_test_images if precision == "bf16" else args.test_images
    rate_before = matmul_gflops(args.device)
    sync(args.device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    ends = [wall]

    def tick(*_: object) -> None:
        sync(args.device)
        ends.append(time.perf_counter())

    models = train.train_models(args.model, x, y, 10, replace(cfg, epochs=epochs), on_epoch=tick)
    train_s = min(b - a for a, b in zip(ends, ends[1:], strict=False))  # the least disturbed epoch
    train_s *= 1 if batched else args.repeats  # one after another, a tick is one model's epoch
    test_s = best_of(lambda: train.test_models(models, tx[:n_test], ty[:n_test], cfg), 2, args.device)
    load = (cpu_seconds() - cpu) / (time.perf_counter() - wall) / torch.get_num_threads()
    rate = (rate_before + matmul_gflops(args.device)) / 2
    flops = epoch_flops(args.model, x, args.repeats, cfg.batch_size)
    tflops = test_flops(args.model, tx[:n_test], args.repeats)
    return {
        "shape": f"{shape[1]}x{shape[1]}x{shape[0]}",
        "ipc": ipc,
        "precision": precision,
        "path": "batched" if batched else "sequential",
        "epochs_timed": epochs,
        "s_per_epoch": train_s,
        "test_s": test_s,
        "test_images": n_test,
        "gflop_per_epoch": flops / 1e9,
        "gflops": flops / train_s / 1e9,
        "test_gflops": tflops / test_s / 1e9,
        "matmul_gflops": rate,
        "epoch_of_limit": flops / train_s / 1e9 / rate,
        "test_of_limit": tflops / test_s / 1e9 / rate,
        "load": load,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def tree_rows(args: argparse.Namespace) -> list[dict]:
    """Every speed row once per source tree, each in its own process, the trees interleaved."""
    rows = []
    for shape in args.shapes:
        for ipc in args.ipc:
            for name, src in (t.split("=", 1) for t in args.trees):
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "rows.json")
                    cmd = [sys.executable, __file__, "--parts", "speed", "--shapes", shape, "--ipc", str(ipc)]
                    cmd += ["--json", out, "--model", args.model, "--repeats", str(args.repeats)]
                    cmd += ["--epochs", str(args.epochs), "--test-images", str(args.test_images)]
                    cmd += ["--precisions", *args.precisions, "--paths", *args.paths]
                    cmd += ["--threads", str(args.threads)] if args.threads else []
                    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                    with open(out) as f:
                        got = json.load(f)["rows"]
                for row in got:
                    rows.append(row | {"tree": name})
                    print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def pool_rows(args: argparse.Namespace) -> list[dict]:
    """One pool network's epoch on CIFAR-10, then the evaluation's epoch on 100 CIFAR-shaped images
    (one model, the speed rows' timing), each per 1 000 training images."""
    from atomdd.pool import build
    from atomdd.settings import PoolSettings

    settings = PoolSettings(
        "cifar10", args.model, zca=False, members=1, epochs=1, device=args.device, data_root=args.data_root
    )
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), cpu_seconds()
        _, record = build(settings, tmp)
        load = (cpu_seconds() - cpu) / (time.perf_counter() - wall) / torch.get_num_threads()
    pool_s, images = record["done"][0]["seconds_per_epoch"], 50_000
    one = argparse.Namespace(**vars(args) | {"repeats": 1})
    ev = time_row(one, (3, 32), 10, "fp32", False)
    return [
        {"what": "pool network, CIFAR-10 train set", "images": images, "s_per_epoch": pool_s,
         "ms_per_1000": 1000 * pool_s / images * 1000, "load": load, "note": "load over the whole build"},
        {"what": "evaluation model, IPC-10 set", "images": 100, "s_per_epoch": ev["s_per_epoch"],
         "ms_per_1000": 1000 * ev["s_per_epoch"] / 100 * 1000, "load": ev["load"], "note": "fastest epoch"},
    ]  # fmt: skip


def accuracy(args: argparse.Namespace, precision: str) -> dict:
    from atomdd.coreset import select

    syn = select("digits", args.acc_ipc, "random", seed=args.seed)
    cfg = TrainConfig(
        epochs=args.acc_epochs,
        repeats=args.acc_repeats,
        device=args.device,
        precision=precision,
        seed=args.seed,
    )
    t = time.perf_counter()
    models = train.train_models(args.model, syn.images, syn.labels, 10, cfg)
    from atomdd.data import load_dataset

    data = load_dataset("digits")
    accs = train.test_models(models, syn.preprocess()(data.test_images), data.test_labels, cfg)
    return {
        "precision": precision,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs),
        "runs": accs,
        "seconds": time.perf_counter() - t,
    }


def diagnose(args: argparse.Namespace, shape: tuple[int, int], ipc: int) -> list[dict]:
    """Why batching does (not) pay here: the layers of one step, stacked vs one model at a time."""
    r, b = args.repeats, 10 * ipc
    (model,) = train.init_models(args.model, shape[0], 10, shape[1], [0], 0)
    seen: list[tuple[nn.Module, torch.Size]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0].shape)))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.GroupNorm))
    ]
    model(torch.randn(1, shape[0], shape[1], shape[1]))
    for h in hooks:
        h.remove()
    rows = []
    for mod, in_shape in seen:
        xs = [torch.randn(b, *in_shape[1:], requires_grad=True) for _ in range(r)]  # one leaf per model
        x = torch.stack(xs).detach().requires_grad_()  # R × B × C × H × W, as vmap sees it
        if isinstance(mod, nn.Conv2d):
            ws = [torch.randn(mod.weight.shape, requires_grad=True) for _ in range(r)]
            w = torch.stack(ws).detach().requires_grad_()

            def one(xi: torch.Tensor, wi: torch.Tensor, mod: nn.Module = mod) -> torch.Tensor:
                return F.conv2d(xi, wi, padding=mod.padding)

            def stacked(x: torch.Tensor, w: torch.Tensor, mod: nn.Module = mod) -> torch.Tensor:
                out = F.conv2d(
                    x.transpose(0, 1).flatten(1, 2), w.flatten(0, 1), padding=mod.padding, groups=r
                )
                return out.unflatten(1, (r, -1)).transpose(0, 1)  # what vmap lowers a stacked conv to

            name = f"conv {in_shape[1]}→{mod.out_channels} @ {in_shape[2]}px, grouped"
        else:
            ws = [torch.randn(mod.num_channels, requires_grad=True) for _ in range(r)]
            w = torch.stack(ws).detach().requires_grad_()

            def one(xi: torch.Tensor, wi: torch.Tensor, mod: nn.Module = mod) -> torch.Tensor:
                return F.group_norm(xi, mod.num_groups, wi, wi)

            def stacked(x: torch.Tensor, w: torch.Tensor, mod: nn.Module = mod) -> torch.Tensor:
                return torch.vmap(lambda xi, wi: F.group_norm(xi, mod.num_groups, wi, wi))(x, w)

            name = f"group norm {in_shape[1]} ch @ {in_shape[2]}px, vmap"

        def separate(one=one, xs=xs, ws=ws) -> None:
            for xi, wi in zip(xs, ws, strict=True):
                out = one(xi, wi)
                torch.autograd.grad(out, (xi, wi), torch.ones_like(out))

        def together(stacked=stacked, x=x, w=w) -> None:
            out = stacked(x, w)
            torch.autograd.grad(out, (x, w), torch.ones_like(out))

        sep, st = best_of(separate, 3), best_of(together, 3)
        rows.append({"layer": name, "separate_ms": sep * 1e3, "stacked_ms": st * 1e3, "ratio": sep / st})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="convnet")
    ap.add_argument(
        "--repeats", "--runs", type=int, default=10, help="models per protocol (trained together or not)"
    )
    ap.add_argument("--shapes", nargs="+", default=["28x1", "32x3"], help="SIZExCHANNELS")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--bf16-ipc", type=int, default=1)
    ap.add_argument("--bf16-epochs", type=int, default=1)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--bf16-test-images", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the diagnosis part runs on the CPU)")
    ap.add_argument("--parts", nargs="+", default=["speed", "accuracy", "diagnosis"])
    ap.add_argument("--paths", nargs="+", default=["batched", "sequential"])
    ap.add_argument("--trees", nargs="+", default=[], metavar="NAME=SRC", help="source trees to interleave")
    ap.add_argument("--acc-ipc", type=int, default=10)
    ap.add_argument("--acc-repeats", "--acc-runs", type=int, default=3)
    ap.add_argument("--acc-epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None, help="where CIFAR-10 is (the pool part)")
    ap.add_argument("--json", default="benchmarks/results/eval_speed.json")
    args = ap.parse_args()
    from atomdd.errors import AtomddError
    from atomdd.hardware import resolve_device, tune_cpu_allocator

    try:
        args.device = str(resolve_device(args.device))  # a clear message for cuda without a GPU
    except AtomddError as e:
        ap.error(str(e))
    tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(int(s.split("x")[1]), int(s.split("x")[0])) for s in args.shapes]
    start = time.perf_counter()
    rates = {
        "fp32_matmul_gflops": matmul_gflops(args.device),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
    }
    print(
        f"fp32 matmul: {rates['fp32_matmul_gflops']:.0f} GFLOP/s on {rates['device']}, "
        f"{rates['threads']} CPU thread(s)",
        flush=True,
    )

    rows = tree_rows(args) if args.trees and "speed" in args.parts else []
    for shape in shapes if "speed" in args.parts and not args.trees else []:
        for precision in args.precisions:
            for ipc in [args.bf16_ipc] if precision == "bf16" else args.ipc:
                for path in args.paths:
                    row = time_row(args, shape, ipc, precision, path == "batched")
                    rows.append(row)
                    print(f"  {row}", file=sys.stderr, flush=True)
    acc = [accuracy(args, p) for p in args.precisions] if "accuracy" in args.parts else []
    diag = diagnose(args, shapes[0], max(args.ipc)) if "diagnosis" in args.parts else []
    pool = pool_rows(args) if "pool" in args.parts else []

    from atomdd.io import versions, write_json

    write_json(
        args.json,
        {
            "rows": rows,
            "accuracy": acc,
            "diagnosis": diag,
            "pool": pool,
            "machine": rates,
            "model": args.model,
            "runs": args.repeats,  # the key earlier results hold
            "seconds": time.perf_counter() - start,
            "versions": versions(),
            "command": sys.argv,
        },
    )
    print_tables(args, rows, acc, diag, rates, pool)


def print_tables(
    args: argparse.Namespace,
    rows: list[dict],
    acc: list[dict],
    diag: list[dict],
    rates: dict,
    pool: list[dict],
) -> None:
    print(
        f"\n{args.repeats} × {args.model} on {rates['device']}, fp32 matmul "
        f"{rates['fp32_matmul_gflops']:.0f} GFLOP/s, {rates['threads']} CPU thread(s)"
    )
    print(
        "\n| shape | IPC | precision | path | tree | s/epoch | GFLOP/epoch | GFLOP/s | epoch % of limit | "
        "test s, images | test % of limit | matmul GFLOP/s | load | peak MB | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first: dict[tuple, dict] = {}
    for r in rows:
        f = first.setdefault((r["shape"], r["ipc"], r["precision"], r["path"]), r)
        up = f"{f['s_per_epoch'] / r['s_per_epoch']:.2f}× / {f['test_s'] / r['test_s']:.2f}×"
        print(
            f"| {r['shape']} | {r['ipc']} | {r['precision']} | {r['path']} | {r.get('tree', '–')} | "
            f"{r['s_per_epoch']:.3f} | {r['gflop_per_epoch']:.1f} | {r['gflops']:.0f} | "
            f"{100 * r['epoch_of_limit']:.0f} % | {r['test_s']:.2f}, {r['test_images']} | "
            f"{100 * r['test_of_limit']:.0f} % | {r['matmul_gflops']:.0f} | {r['load']:.2f} | "
            f"{r['peak_mb']:.0f} | {up if 'tree' in r else '–'} |"
        )
    if acc:
        print("\n| precision | digits accuracy (%) | models | epochs | seconds |\n|---|---|---|---|---|")
        for a in acc:
            print(
                f"| {a['precision']} | {a['mean']:.2f} ± {a['std']:.2f} | {len(a['runs'])} | "
                f"{args.acc_epochs} | {a['seconds']:.0f} |"
            )
    if diag:
        print(
            f"\n| layer fwd+bwd, {args.repeats} models × {10 * max(args.ipc)} images | separate ms | "
            "stacked ms | separate/stacked |\n|---|---|---|---|"
        )
        for d in diag:
            print(f"| {d['layer']} | {d['separate_ms']:.1f} | {d['stacked_ms']:.1f} | {d['ratio']:.2f} |")
    if pool:
        print("\n| training | images | s/epoch | ms per 1 000 images | load |\n|---|---|---|---|---|")
        for p in pool:
            print(
                f"| {p['what']} | {p['images']} | {p['s_per_epoch']:.2f} | {p['ms_per_1000']:.0f} | "
                f"{p['load']:.2f} ({p['note']}) |"
            )


if __name__ == "__main__":
    main()
