"""docs/accuracy.md, generated from benchmarks/results/ (the repository's page, not the library's):
the tables of the MNIST long-budget grid and of every CIFAR-10 grid, no figures, so the page
regenerates exactly. Run it after adding results; tests/test_docs.py fails while the page and the
results disagree.

    python benchmarks/accuracy_page.py
"""

from __future__ import annotations

import re
from pathlib import Path

from atomdd.report.page import render

ROOT = Path(__file__).resolve().parents[1]
PAGE = "docs/accuracy.md"

INTRO = (
    "Generated from `benchmarks/results/` by `python benchmarks/accuracy_page.py`, not typed: "
    "edit the results or the generator, never this page (`tests/test_docs.py` regenerates it "
    "and fails on any difference). The story behind these numbers (ablations, paired "
    "differences, what changed a default) is in [accuracy-mnist.md](accuracy-mnist.md); "
    "CIFAR-10 in [cifar10.md](cifar10.md). Each run's folder, linked from its row, holds its "
    "set, run.json, eval.json, metrics.jsonl and (distilled sets) grid.png and attention.png."
)


def accuracy_page(root: str | Path = ROOT) -> str:
    """docs/accuracy.md of the repository at `root`."""
    root = Path(root)
    results = root / "benchmarks" / "results"
    grids = [results / "accuracy-mnist-s1000-e300", *sorted(results.glob("cifar10-*"))]
    grids = [g for g in grids if g.is_dir()]
    # folders still in progress (no eval.json) are left out, so the page changes only with results
    page = render(grids, root / PAGE, figures=False, title="Accuracy", intro=INTRO, evaluated_only=True)
    return without_data_paths(page)


def without_data_paths(text: str) -> str:
    """The data folder the runs read is the user's own `--data-root`: shown as DATA, not as a path;
    a grid's output folder as where it is kept in the repository."""
    text = re.sub(r'("data_root": )"[^"]*"', r'\1"DATA"', text)
    text = re.sub(r"--out \S*?results/", "--out benchmarks/results/", text)
    return re.sub(r"--data-root \S+", "--data-root DATA", text)


if __name__ == "__main__":
    (ROOT / PAGE).write_text(accuracy_page(ROOT))
    print(f"wrote {PAGE}")
