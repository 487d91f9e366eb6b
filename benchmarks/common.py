"""What the benchmarks share: a synthetic problem, the machine's dense rate, CPU time, GPU sync,
a timer of the fastest call, child processes of a benchmark, a launcher of torchrun-like ranks, and
the published DataDAM and DM codes' own distillation steps (run from a checkout the user gives). The
benchmarks import this module and no other benchmark; they time `Distiller.step()`, the step a run
takes.

Run from the repository root (`python benchmarks/X.py`): Python puts benchmarks/ first on the path.
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from atomdd.hardware import KERNEL_LIMITS

# the CPU kinds the speed benchmarks compare, as the environment of a child process: this CPU's own
# kernels, and the same machine held to AVX2 (a CPU with AVX2 and no AVX-512)
ISAS = {"native": {}, "avx2": KERNEL_LIMITS["avx2"]}


def synthetic_problem(classes: int = 10, per_class: int = 300):
    """CIFAR-shaped random pixels (3×32×32, seeded): a step's speed does not depend on content."""
    from atomdd.data import Dataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    names = tuple(map(str, range(classes)))
    return Dataset("random32", images, labels, images[:100], labels[:100], names, (0.5,) * 3, (0.25,) * 3)


def distiller(dataset: str, ipc: int, method: str, classes: int = 10, per_class: int = 300, **settings):
    """A `Distiller` of `method` at `ipc` with `dataset`'s preset, run on `synthetic_problem`."""
    from dataclasses import replace

    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    cfg = make_config(dataset, ipc, method, **settings)
    return Distiller(replace(cfg, dataset="random32"), data=synthetic_problem(classes, per_class))


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock timer measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], reps: int = 5, device: str | torch.device = "cpu") -> float:
    """Fastest of `reps` timed calls after one warm-up: the least disturbed by other load."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 0, reps: int = 5
) -> float:
    """The machine's dense rate: n×n matmuls (default 2048 on a CPU, 8192 on a GPU), the fastest of
    `reps`, the least disturbed by other load."""
    n = n or (8192 if torch.device(device).type == "cuda" else 2048)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_of(lambda: a @ b, reps, device) / 1e9


def cpu_seconds() -> float:
    """CPU seconds this process has used (user and system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _env(tree: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with `extra`, and `tree` (a source tree) first on PYTHONPATH."""
    env = os.environ | (extra or {})
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    return env


def children(
    script: str, jobs: list[dict | None], tree: str | None = None, env: dict[str, str] | None = None
) -> list[dict]:
    """`script --child JOB` (JOB as JSON; None: no job) for each of `jobs`, started together, one
    process each (`tree`: a source tree first on their PYTHONPATH; `env`: more variables); each
    child's last line of output, as JSON. A child that fails ends the benchmark with its errors."""
    procs = []
    for job in jobs:
        cmd = [sys.executable, script, "--child", *([json.dumps(job)] if job is not None else [])]
        procs.append(
            subprocess.Popen(
                cmd, env=_env(tree, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate() for p in procs]
    for job, p, (_, err) in zip(jobs, procs, outs, strict=True):
        if p.returncode:
            raise SystemExit(f"child failed: {job} ({tree or 'this tree'}):\n{err[-3000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def child(script: str, job: dict | None, tree: str | None = None, env: dict[str, str] | None = None) -> dict:
    """`children` of one job."""
    return children(script, [job], tree, env)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, job: dict, script: str, tree: str | None = None) -> dict:
    """`world` ranks of `script --rank-job JOB` as torchrun starts them (its environment variables),
    on this machine; `tree`: a source tree put first on their PYTHONPATH. Rank 0's last line."""
    port, procs = free_port(), []
    for r in range(world):
        env = _env(tree, {
            "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(job.get("threads", 1)),
        })  # fmt: skip
        cmd = [sys.executable, script, "--rank-job", json.dumps(job)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate() for p in procs]
    for r, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        if p.returncode != 0:
            raise SystemExit(f"rank {r} of {world} exited {p.returncode}:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


# --- the published codes' steps ------------------------------------------------------------------
# Their modules import packages this project does not (torchvision, kornia), so the few functions a
# step calls are read out of a checkout's files by name and run in a namespace; nothing of them is
# kept in this repository. DSA's strategy is the one both codes run on CIFAR-10.
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
_OPS = ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop", "cutout")
_AUGMENT = {"ParamDiffAug", "set_seed_DiffAug", "DiffAugment", "AUGMENT_FNS"} | {f"rand_{op}" for op in _OPS}


def read_functions(path: Path, names: set[str]) -> str:
    """The source of the top-level functions, classes and assignments named `names` in `path`."""
    src = path.read_text()
    keep = [
        n
        for n in ast.parse(src).body
        if getattr(n, "name", None) in names
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in names for t in n.targets))
    ]
    return "\n".join(ast.get_source_segment(src, n) or "" for n in keep)


def published_code(code: Path, extra: set[str] = frozenset()) -> dict:
    """A namespace with a checkout's ConvNet (networks.py) and its augmentation (utils.py, and the
    names in `extra`)."""
    for name in ("networks.py", "utils.py"):
        if not (code / name).is_file():
            raise SystemExit(f"{code} has no {name}: give a checkout of the published code")
    ns: dict = {"torch": torch, "nn": nn, "F": F, "np": np, "time": time, "Dataset": torch.utils.data.Dataset}
    exec(read_functions(code / "networks.py", {"ConvNet"}), ns)  # noqa: S102 (the user's checkout)
    # DM's Siamese augmentation copies a tensor's first row onto itself (`t[:] = t[0]`), which
    # torch 2 refuses; DataDAM's copy of the same functions clones the row first, which computes the
    # same: that fix, applied where it is missing
    utils = read_functions(code / "utils.py", _AUGMENT | extra)
    exec(re.sub(r"(\w+)\[:\] = \1\[0\]$", r"\1[:] = \1[0].clone()", utils, flags=re.M), ns)  # noqa: S102
    return ns


# each code's ConvNet-3 (width 128, ReLU, average pooling, 32×32), in distillation and evaluation alike
PUBLISHED_NORM = {"datadam": "batchnorm", "dm": "instancenorm"}


def published_convnet(ns: dict, method: str, classes: int) -> nn.Module:
    """A fresh ConvNet-3 of `method`'s published code, from its namespace (`published_code`)."""
    return ns["ConvNet"](3, classes, 128, 3, "relu", PUBLISHED_NORM[method], "avgpooling", (32, 32))


def published_step(
    code: Path, method: str, real: torch.Tensor, labels: torch.Tensor, syn: torch.Tensor, batch_real: int
) -> Callable[[], float]:
    """One step of the published code's distillation, as a call (the loss it returns as a float):
    `method` "datadam" (DataDAM's main_DataDAM.py: a fresh batch-norm ConvNet-3 in train mode, every
    class's real images in one forward call and every synthetic image in a second, attention of
    power 1 on blocks 1 and 2 ×100 and the embedding ×100 × 0.01, over class means) or "dm" (DM's
    main_DM.py: a fresh instance-norm ConvNet-3, each class's real and synthetic images embedded in
    their own calls, squared distance of the class means). Both draw one augmentation seed per class
    from the clock, as the codes do, and step `syn` (k × IPC images, class-major) by SGD lr 1,
    momentum 0.5. `real`: the train images as the code feeds them (ZCA-whitened for DataDAM)."""
    k = int(labels.max()) + 1
    ipc = len(syn) // k
    ns = published_code(code, {"get_attention"} if method == "datadam" else set())
    by_class = [torch.where(labels == c)[0] for c in range(k)]
    syn.requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    param = ns["ParamDiffAug"]()

    def augmented(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(time.time() * 1000) % 100000  # the codes' seed: the clock, one per class
        idx = by_class[c][torch.randperm(len(by_class[c]))[:batch_real]]
        aug = ns["DiffAugment"]
        return aug(real[idx], DSA_STRATEGY, seed=seed, param=param), aug(
            syn[c * ipc : (c + 1) * ipc], DSA_STRATEGY, seed=seed, param=param
        )

    def class_means(a: torch.Tensor) -> torch.Tensor:
        return a.reshape(k, -1, a[0].numel()).mean(1)

    def datadam_loss(net: nn.Module) -> torch.Tensor:
        reals, syns = zip(*(augmented(c) for c in range(k)), strict=True)
        relus = [m for m in net.features if isinstance(m, nn.ReLU)]
        acts: dict[int, torch.Tensor] = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o, j=j: acts.__setitem__(j, o)) for j, m in enumerate(relus)
        ]
        emb_r = net(torch.cat(reals))[0].detach()
        att_r = [acts[j].detach() for j in range(len(relus))]
        emb_s = net(torch.cat(syns))[0]
        att_s = [acts[j] for j in range(len(relus))]
        for h in hooks:
            h.remove()
        att = ns["get_attention"]
        loss = sum(
            100 * ((class_means(att(r, 1, 1, "l2")) - class_means(att(s, 1, 1, "l2"))) ** 2).sum()
            for r, s in zip(att_r[:-1], att_s[:-1], strict=True)
        )
        return loss + 100 * 0.01 * ((class_means(emb_r) - class_means(emb_s)) ** 2).sum()

    def dm_loss(net: nn.Module) -> torch.Tensor:
        loss = torch.tensor(0.0)
        for c in range(k):
            r, s = augmented(c)
            loss = loss + ((net.embed(r).detach().mean(0) - net.embed(s).mean(0)) ** 2).sum()
        return loss

    def step() -> float:
        net = published_convnet(ns, method, k).train()
        for p in net.parameters():
            p.requires_grad = False
        loss = (datadam_loss if method == "datadam" else dm_loss)(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# the published codes' evaluation: (its batch, our model with its ConvNet's norm)
PUBLISHED_EVALUATION = {"datadam": (64, "convnet(norm=batchnorm)"), "dm": (256, "convnet")}


def published_epoch(
    code: Path, method: str, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """One training epoch of the published code's evaluation (`utils.epoch`, as `evaluate_synset`
    calls it): a fresh ConvNet-3 of its norm, its DataLoader over `images` (batch as
    `PUBLISHED_EVALUATION`), DSA per batch, SGD 0.01 / 0.9 / 5e-4; a call trains one more epoch."""
    import types

    ns = published_code(code, {"epoch", "TensorDataset"})
    batch, _ = PUBLISHED_EVALUATION[method]
    net = published_convnet(ns, method, int(labels.max()) + 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    loader = torch.utils.data.DataLoader(ns["TensorDataset"](images, labels), batch_size=batch, shuffle=True)
    args = types.SimpleNamespace(
        device="cpu", dsa=True, dsa_strategy=DSA_STRATEGY, dsa_param=ns["ParamDiffAug"]()
    )
    criterion = nn.CrossEntropyLoss()
    return lambda: ns["epoch"]("train", loader, net, opt, criterion, args, aug=True)
