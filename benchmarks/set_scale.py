"""How far distillation moved each set's pixels: the std of its images over that of real images.

Both in the model's input space (after normalisation and ZCA), so a ratio of 1 means the synthetic
images have the real images' contrast. Reads every finished set under the given grid folders.

    python benchmarks/set_scale.py --data-root DATA benchmarks/results/cifar10-s200-e300
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grids", nargs="+", type=Path)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    from atomdd.data import load_dataset
    from atomdd.folders.layout import GRID_MEMBERS, SET_FILE
    from atomdd.sets import load_synthetic

    real_std: dict[str, float] = {}
    print("| set | images | std | std / real | max abs |")
    print("|---|---|---|---|---|")
    for folder in sorted(p.parent for g in args.grids for p in g.glob(f"{GRID_MEMBERS}/{SET_FILE}")):
        syn = load_synthetic(folder)
        if syn.dataset not in real_std:
            data = load_dataset(syn.dataset, args.data_root)
            real_std[syn.dataset] = float(syn.preprocess()(data.train_images[:5000]).std())
        std, name = float(syn.images.std()), "/".join(folder.parts[-3:])
        print(
            f"| {name} | {len(syn.labels)} | {std:.3f} | "
            f"{std / real_std[syn.dataset]:.1f} | {float(syn.images.abs().max()):.1f} |"
        )
    stds = ", ".join(f"{k} {v:.3f}" for k, v in real_std.items())
    print(f"real images' std (first 5 000 training images): {stds}")


if __name__ == "__main__":
    main()
