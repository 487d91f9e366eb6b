"""Rank correlation of each NAS proxy with the truth over a subset of a finished search: the
architectures whose reference does (or, with --without, does not) contain a string. Reads the
search's results.jsonl and its truth file.

    python benchmarks/nas_subset.py benchmarks/results/nas-cifar10-cpu --without norm=batchnorm
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atomdd.folders.layout import NAS_RESULTS, NAS_TRUTH
from atomdd.io import read_jsonl
from atomdd.nas import RESULT_ROW
from atomdd.ranking import kendall, spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "folder", type=Path, help="a search's --out folder (results.jsonl; truth/*.jsonl or whole rows)"
    )
    ap.add_argument("--without", help="leave out architectures whose reference contains this")
    ap.add_argument("--only", help="keep only architectures whose reference contains this")
    args = ap.parse_args()
    files = [args.folder / NAS_RESULTS, *sorted((args.folder / NAS_TRUTH).glob("*.jsonl"))]
    rows = [r for f in files if f.exists() for r in read_jsonl(f, RESULT_ROW)]
    by: dict[str, dict[str, float]] = {}
    for r in rows:
        by.setdefault(r["proxy"], {})[r["arch"]] = r["accuracy"]
    truth = by.pop("whole")

    def kept(arch: str) -> bool:
        return (args.without is None or args.without not in arch) and (args.only is None or args.only in arch)

    print("| proxy | architectures | Spearman | Kendall |\n|---|---|---|---|")
    for proxy, acc in by.items():
        archs = [a for a in acc if a in truth and kept(a)]
        x, y = [acc[a] for a in archs], [truth[a] for a in archs]
        print(f"| {proxy} | {len(archs)} | {spearman(x, y):.2f} | {kendall(x, y):.2f} |")


if __name__ == "__main__":
    main()
