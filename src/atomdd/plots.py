"""The report's figures (`reporting.py`): accuracy against IPC, loss curves, each run's synthetic
grid and attention maps. Drawn with matplotlib's `Figure` (no backend chosen) from folders only."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from atomdd.distillation.folder import METRICS, METRICS_ROW
from atomdd.io import atomic_path, read_jsonl
from atomdd.runs import Group, Run, method_order


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def accuracy_vs_ipc(by_method: dict[str, dict[int, list[Run]]], model: str, path: Path) -> Path:
    """Test accuracy (mean ± std over every model of every seed) against IPC, a line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label in sorted(by_method, key=method_order):
        pts = []
        for ipc, runs in sorted(by_method[label].items()):
            if not ipc:  # the whole data has no IPC
                continue
            accs = [a for r in runs for a in r.evaluation["models"][model]["runs"]]
            pts.append((ipc, statistics.mean(accs), statistics.pstdev(accs)))
        if not pts:
            continue
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ipcs = sorted({i for v in by_method.values() for i in v} - {0})
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel(f"test accuracy (%), {model}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_curves(chosen: list[Run], path: Path) -> Path | None:
    """The matching loss against the step (metrics.jsonl), a panel per IPC, a line per method."""
    from matplotlib.figure import Figure

    logged = [
        (r, read_jsonl(r.folder / METRICS, METRICS_ROW)) for r in chosen if (r.folder / METRICS).exists()
    ]
    logged = [(r, rows) for r, rows in logged if rows]
    if not logged:
        return None
    ipcs = sorted({r.ipc for r, _ in logged})
    fig = Figure(figsize=(5 * len(ipcs), 3.6))
    axes = fig.subplots(1, len(ipcs), squeeze=False)[0]
    for ax, ipc in zip(axes, ipcs, strict=True):
        for r, rows in logged:
            if r.ipc == ipc:
                label = r.label if r.group != "runs" else f"{r.label} ({r.folder.name})"
                ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], lw=1.2, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("distillation step")
        ax.set_ylabel("matching loss (log scale)")
        ax.set_title(f"IPC {ipc}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _lowest_seeds(group: Group) -> list[Run]:
    """One run per (dataset, method, IPC): the lowest seed's."""
    best: dict[tuple, Run] = {}
    for r in group.runs:
        key = (r.dataset, r.label, r.ipc)
        if key not in best or r.seed < best[key].seed:
            best[key] = r
    return list(best.values())


def run_figures(group: Group, out: Path, prefix: str) -> list[str]:
    """Markdown lines of the group's loss curves and each run's grid (redrawn from its set, class
    names on the rows; else copied) and attention maps (copied); of a grid, the lowest seed of each
    (method, IPC) only."""
    runs = _lowest_seeds(group) if group.folder is not None else group.runs
    chosen = sorted(runs, key=lambda r: (r.dataset, r.ipc, method_order(r.label), r.seed))
    md = []
    if png := loss_curves(chosen, out / f"{prefix}-loss.png"):
        md.append(f"![matching loss against step]({png.name})\n")
        which = "the lowest seed of each method" if group.folder is not None else "each run"
        md.append(f"Loss curves: {which} (DM's loss is on another scale).\n")
    for n, r in enumerate(chosen):
        name = f"{prefix}-{r.label}-ipc{r.ipc}-seed{r.seed}" + (f"-{n}" if group.folder is None else "")
        shown = []
        if (r.folder / "synthetic.safetensors").exists():
            from atomdd.report import display_images, save_grid
            from atomdd.sets import load_synthetic

            syn = load_synthetic(r.folder)
            images, how = display_images(syn)
            save_grid(images, syn.labels, out / f"{name}-grid.png", class_names=syn.classes)
            shown.append(f"![synthetic images]({name}-grid.png)\n\nSynthetic images ({how}).\n")
        elif (r.folder / "grid.png").exists():
            shutil.copyfile(r.folder / "grid.png", out / f"{name}-grid.png")
            shown.append(
                f"![synthetic images]({name}-grid.png)\n\nSynthetic images (as the run drew them).\n"
            )
        if (r.folder / "attention.png").exists():
            shutil.copyfile(r.folder / "attention.png", out / f"{name}-attention.png")
            shown.append(
                f"![attention maps]({name}-attention.png)\n\nAttention of real vs synthetic images "
                "(step 0's network; spatial maps per matched block, channel profile of the last).\n"
            )
        if shown:
            md.append(f"#### {r.label}, IPC {r.ipc}, seed {r.seed}\n\n" + "\n".join(shown))
    return md
