"""Charts: accuracy against IPC, the matching loss against the step, an architecture search's proxy
against true accuracy. Drawn with matplotlib's `Figure` (no backend chosen) from what the folders
hold (eval.json, metrics.jsonl, nas.json); no torch."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from atomdd.folders.layout import METRICS, METRICS_ROW
from atomdd.folders.read import Folder
from atomdd.io import atomic_path, read_jsonl
from atomdd.methods import method_order
from atomdd.report.tables import cell


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def accuracy_vs_ipc(by_method: dict[str, dict[int, list[Folder]]], model: str, path: Path) -> Path:
    """Test accuracy (mean ± std over every model of every seed) against IPC, a line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label in sorted(by_method, key=method_order):
        pts = []
        for ipc, found in sorted(by_method[label].items()):
            if not ipc:  # the whole data has no IPC
                continue
            accs = [a for r in found for a in r.evaluation["models"][model]["runs"]]
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


def loss_curves(chosen: list[Folder], path: Path) -> Path | None:
    """The matching loss against the step (metrics.jsonl), a panel per IPC, a line per method."""
    from matplotlib.figure import Figure

    logged = [(r, read_jsonl(r.path / METRICS, METRICS_ROW)) for r in chosen if (r.path / METRICS).exists()]
    logged = [(r, rows) for r, rows in logged if rows]
    if not logged:
        return None
    ipcs = sorted({r.ipc for r, _ in logged})
    fig = Figure(figsize=(5 * len(ipcs), 3.6))
    axes = fig.subplots(1, len(ipcs), squeeze=False)[0]
    for ax, ipc in zip(axes, ipcs, strict=True):
        for r, rows in logged:
            if r.ipc == ipc:
                label = r.label if r.group != "runs" else f"{r.label} ({r.path.name})"
                ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], lw=1.2, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("distillation step")
        ax.set_ylabel("matching loss (log scale)")
        ax.set_title(f"IPC {ipc}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def nas_scatter(summary: dict[str, Any], path: str | Path) -> Path:
    """Proxy accuracy against true accuracy, one colour per proxy (nas.json's summary)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    truth = summary["proxies"].get("whole", {}).get("accuracy", {})
    for label, p in summary["proxies"].items():
        if label == "whole":
            continue
        archs = [a for a in p["accuracy"] if a in truth]
        rho = cell(p["spearman_all"], ".2f")
        ax.scatter(
            [truth[a] for a in archs], [p["accuracy"][a] for a in archs], s=14, label=f"{label} (ρ {rho})"
        )
    ax.set_xlabel("accuracy trained on the whole data (%)")
    ax.set_ylabel("accuracy trained on the proxy (%)")
    ax.set_title(f"{summary['settings']['dataset']}: architecture search proxies", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi=100)
