"""Does a batch-norm evaluation fail on a set because of the set's pixel scale?

A batch-norm ConvNet tested in eval mode normalises the test images with the running statistics of
the images it trained on. A set whose pixels sit at ten times the test images' spread (the DataDAM
code's sets: its ZCA refit shrinks the initial images to a std of 0.05, and a loss that batch norm
makes blind to scale lets the first steps throw them to 5–8) hands the test images statistics that
do not fit them. This trains the same models (same weights, same augmentations: one seed) on each
set as it is and rescaled to the test images' pixel std, tests them in eval mode, and, as a
diagnosis only, with the test batches' own statistics; the instance-norm ConvNet beside them.

    python benchmarks/bn_scale.py --data-root DATA SET_FOLDER... [--epochs 300 --repeats 3 --json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def batch_stats_accuracy(models: list, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> list[float]:
    """Accuracy (%) with batch norm in train mode at test: each test batch normalised by itself."""
    out = []
    for m in models:
        m.train()
        with torch.no_grad():
            batches = zip(x.split(batch), y.split(batch), strict=True)
            hits = sum(int((m(xb).argmax(1) == yb).sum()) for xb, yb in batches)
        out.append(100.0 * hits / len(y))
    return out


def _cell(accs: list[float]) -> str:
    t = torch.tensor(accs)
    return f"{t.mean():.1f} ± {t.std(unbiased=False):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--test-limit", type=int, default=2000, help="the first N test images")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from atomdd.data import load_dataset
    from atomdd.io import versions
    from atomdd.provenance import git_state
    from atomdd.sets import load_synthetic
    from atomdd.settings import TrainConfig
    from atomdd.train import test_models, train_models

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, repeats=args.repeats)
    rows, data = [], None
    print("| set | set std | test std | BN, as is | BN, rescaled | BN, test-batch stats | IN, as is |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.sets:
        t0 = time.perf_counter()
        syn = load_synthetic(folder)
        if data is None or data.name != syn.dataset:
            data = load_dataset(syn.dataset, args.data_root)
        test_x = syn.preprocess()(data.test_images[: args.test_limit])
        test_y = data.test_labels[: args.test_limit]
        x, y = syn.decoded()
        ratio = float(test_x.std() / x.std())
        row = {"set": str(folder), "set_std": float(x.std()), "test_std": float(test_x.std())}
        row["rescale"] = ratio
        bn = train_models("convnet(norm=batchnorm)", x, y, data.num_classes, cfg)
        row["bn"] = test_models(bn, test_x, test_y, cfg)
        row["bn_test_batch_stats"] = batch_stats_accuracy(bn, test_x, test_y)
        bn_scaled = train_models("convnet(norm=batchnorm)", x * ratio, y, data.num_classes, cfg)
        row["bn_rescaled"] = test_models(bn_scaled, test_x, test_y, cfg)
        row["in"] = test_models(train_models("convnet", x, y, data.num_classes, cfg), test_x, test_y, cfg)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        cells = " | ".join(_cell(row[k]) for k in ("bn", "bn_rescaled", "bn_test_batch_stats", "in"))
        print(f"| {folder} | {row['set_std']:.2f} | {row['test_std']:.2f} | {cells} |", flush=True)
    if args.json:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
        record |= {"versions": versions(), "git": git_state(), "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
