"""How the pixels' spread moves over a run's first steps: atomdd's `datadam-code` step against the
published DataDAM code's own step, from the same initial pixels and the same whitened real images.

The published step is run from a checkout of that code given by `--code` (`common.published_step`:
its ConvNet in batch norm, its differentiable augmentation with one seed per class, its attention
(power 1, L2-normalised), its error over class means, SGD lr 1 / momentum 0.5).
The initial pixels are atomdd's (CIFAR-10's ZCA, then the refit on the initial images), so the two
columns differ only by the steps.

    python benchmarks/pixel_growth.py --data-root DATA --code PATH/TO/DataDAM --steps 100 --which published
    python benchmarks/pixel_growth.py --data-root DATA --steps 100 --which ours
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import published_step

MARKS = {1, 5, 25, 50, 100, 200, 400, 800}


def _row(who: str, step: int, pixels: torch.Tensor, loss: float, t0: float) -> None:
    seconds = time.perf_counter() - t0
    print(f"| {who} | {step} | {float(pixels.detach().std()):.3f} | {loss:.1f} | {seconds:.0f} |", flush=True)


def published_steps(code: Path, distiller, steps: int) -> None:
    data, prep = distiller.data, distiller.prep
    real = torch.cat([prep(c) for c in data.train_images.split(5000)])
    syn = distiller.syn.detach().clone()
    step = published_step(code, "datadam", real, data.train_labels, syn, distiller.cfg.batch_real)
    t0 = time.perf_counter()
    for it in range(1, steps + 1):
        loss = step()
        if it in MARKS or it == steps:
            _row("published", it, syn, loss, t0)


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
