"""How the pixels' spread moves over a run's first steps: atomdd's `datadam-code` step against the
published DataDAM code's own step, from the same initial pixels and the same whitened real images.

The published step is run from a checkout of that code given by `--code` (its `networks.py` and
`utils.py`; nothing of it is kept here): its ConvNet in batch norm, its differentiable augmentation
with one seed per class, its attention (power 1, L2-normalised), its error over class means, SGD
lr 1 / momentum 0.5. Its module imports need packages this project does not (torchvision, kornia),
so the few functions the step calls are read out of the files by name and run in a namespace.
The initial pixels are atomdd's (CIFAR-10's ZCA, then the refit on the initial images), so the two
columns differ only by the steps.

    python benchmarks/pixel_growth.py --data-root DATA --code PATH/TO/DataDAM --steps 100 --which published
    python benchmarks/pixel_growth.py --data-root DATA --steps 100 --which ours
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STRATEGY = "color_crop_cutout_flip_scale_rotate"
MARKS = {1, 5, 25, 50, 100, 200, 400, 800}


def _row(who: str, step: int, pixels: torch.Tensor, loss: float, t0: float) -> None:
    seconds = time.perf_counter() - t0
    print(f"| {who} | {step} | {float(pixels.detach().std()):.3f} | {loss:.1f} | {seconds:.0f} |", flush=True)


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


def published_steps(code: Path, distiller, steps: int) -> None:
    ns: dict = {"torch": torch, "nn": nn, "F": F, "np": np, "time": time}
    exec(read_functions(code / "networks.py", {"ConvNet"}), ns)  # noqa: S102 (the user's checkout)
    augment = {"ParamDiffAug", "set_seed_DiffAug", "DiffAugment", "AUGMENT_FNS", "get_attention"}
    ops = ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop", "cutout")
    augment |= {f"rand_{op}" for op in ops}
    exec(read_functions(code / "utils.py", augment), ns)  # noqa: S102
    data, prep, k, ipc = distiller.data, distiller.prep, distiller.k, distiller.cfg.ipc
    real = torch.cat([prep(c) for c in data.train_images.split(5000)])
    by_class = [torch.where(data.train_labels == c)[0] for c in range(k)]
    syn = distiller.syn.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=distiller.cfg.lr_img, momentum=distiller.cfg.momentum)
    param, acts = ns["ParamDiffAug"](), {}

    def error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the code's MSE_B: class means
        return ((a.reshape(k, -1, a[0].numel()).mean(1) - b.reshape(k, -1, b[0].numel()).mean(1)) ** 2).sum()

    t0 = time.perf_counter()
    for it in range(1, steps + 1):
        net = ns["ConvNet"](3, k, 128, 3, "relu", "batchnorm", "avgpooling", (32, 32)).train()
        for p in net.parameters():
            p.requires_grad = False
        reals, syns = [], []
        for c in range(k):
            seed = int(time.time() * 1000) % 100000  # the code's seed: the clock, one per class
            idx = by_class[c][torch.randperm(len(by_class[c]))[: distiller.cfg.batch_real]]
            reals.append(ns["DiffAugment"](real[idx], STRATEGY, seed=seed, param=param))
            syns.append(ns["DiffAugment"](syn[c * ipc : (c + 1) * ipc], STRATEGY, seed=seed, param=param))
        relus = [m for m in net.features if isinstance(m, nn.ReLU)]
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
        pairs = zip(att_r[:-1], att_s[:-1], strict=True)
        loss = sum(100 * error(att(r, 1, 1, "l2"), att(s, 1, 1, "l2")) for r, s in pairs)
        loss = loss + 100 * 0.01 * error(emb_r, emb_s)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it in MARKS or it == steps:
            _row("published", it, syn, float(loss), t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--code", type=Path, help="a checkout of the published DataDAM code")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--which", choices=("ours", "published"), default="ours")
    ap.add_argument("--ipc", type=int, default=1)
    args = ap.parse_args()
    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    d = Distiller(make_config("cifar10", args.ipc, "datadam-code", None, data_root=args.data_root))
    print("| step of | step | pixel std | loss | seconds |\n|---|---|---|---|---|")
    print(f"| both | 0 | {float(d.syn.detach().std()):.3f} | – | 0 |", flush=True)
    if args.which == "published":
        if args.code is None:
            raise SystemExit("--which published needs --code, a checkout of the published DataDAM code")
        published_steps(args.code, d, args.steps)
        return
    t0 = time.perf_counter()
    for it in range(1, args.steps + 1):
        loss, _, _ = d.step()
        if it in MARKS or it == args.steps:
            _row("atomdd", it, d.syn, loss, t0)


if __name__ == "__main__":
    main()
