"""Charts: accuracy against IPC, the matching loss against the step, an architecture search's proxy
against true accuracy. Drawn with matplotlib's `Figure` (no backend chosen) from what the folders
hold (eval.json, metrics.jsonl, nas.json); no torch.

Each is drawn for a paper: a column's width (`COLUMN_IN`) at 8-point type, every series its own
colour and marker (and a small sideways offset, so two series with the same numbers both show),
the legend beside or below the axes rather than over the points, a caption saying what was run,
and the format its file's suffix names: PNG, or vector PDF / SVG (`FIGURE_FORMATS`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError
from atomdd.folders.layout import FIGURE_FORMATS, METRICS, METRICS_ROW
from atomdd.folders.read import Folder
from atomdd.io import atomic_path, read_jsonl
from atomdd.report.tables import cell, row_order

COLUMN_IN = 3.4  # a paper column's width, inches
FONT_PT = 8
# colourblind-safe (Okabe–Ito, then Tol's muted; no yellow, which a white page swallows), each
# paired with its own marker: no two series share both, however many there are
COLOURS = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
    "#332288", "#882255", "#44AA99", "#999933", "#AA4499", "#117733",
)  # fmt: skip
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p", "d", "8")


def series_style(i: int) -> dict[str, Any]:
    """The i-th series' colour and marker: no two alike below 13 · 14 series (each round of the
    colours shifts the markers by one)."""
    rounds, colour = divmod(i, len(COLOURS))
    return {"color": COLOURS[colour], "marker": MARKERS[(rounds + colour) % len(MARKERS)]}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib settings for a figure read at a column's width: 8-point type, thin lines."""
    import matplotlib

    settings = {
        "font.size": FONT_PT,
        "axes.titlesize": FONT_PT,
        "axes.labelsize": FONT_PT,
        "legend.fontsize": FONT_PT - 1,
        "xtick.labelsize": FONT_PT - 1,
        "ytick.labelsize": FONT_PT - 1,
        "lines.linewidth": 1.2,
        "lines.markersize": 4.5,
        "axes.linewidth": 0.6,
        "pdf.fonttype": 42,  # text stays text in a PDF (editable, searchable)
        "svg.fonttype": "none",
    }
    with matplotlib.rc_context(settings):
        yield


def figure(width: float, height: float) -> Any:
    """A figure whose layout keeps the legend and caption off the axes (constrained layout)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: Path, caption: str = "", dpi: int = 200) -> Path:
    """`fig` with `caption` (what was run) above it, in the format `path`'s suffix names (png,
    pdf, svg)."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise AtomddError(f"{path}: a figure is a {', '.join('.' + f for f in FIGURE_FORMATS)} file")
    if caption:
        fig.suptitle(caption, x=0.02, ha="left", fontsize=FONT_PT - 1, wrap=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


def _legend_below(fig: Any, handles: list, labels: list[str]) -> None:
    """One legend under the axes, in as many columns as the labels' length lets the width hold."""
    if handles:
        width = fig.get_figwidth()
        ncol = max(1, min(len(labels), 4, int(width / (0.055 * max(map(len, labels)) + 0.45))))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


def _rows(n: int, per_row: int) -> int:
    return (n + per_row - 1) // per_row


def accuracy_vs_ipc(
    by_method: dict[str, dict[int, list[Folder]]], model: str, path: Path, caption: str = ""
) -> Path:
    """Test accuracy (mean ± std over every model of every seed) against IPC, a line per method;
    the methods sit side by side at each IPC (a small offset), so equal numbers do not hide."""
    labels = sorted(by_method, key=row_order)
    long = max(map(len, labels)) > 24
    with paper_style():
        fig = figure(COLUMN_IN, 2.6 + 0.14 * (len(labels) if long else _rows(len(labels), 3)))
        ax = fig.subplots()
        for i, label in enumerate(labels):
            pts = []
            for ipc, found in sorted(by_method[label].items()):
                if not ipc:  # the whole data has no IPC
                    continue
                accs = [a for r in found for a in r.evaluation["models"][model]["runs"]]
                pts.append((ipc, statistics.mean(accs), statistics.pstdev(accs)))
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            dodge = 1.0 + 0.03 * (i - (len(labels) - 1) / 2)  # on the log axis: a constant offset
            style = series_style(i)
            ax.errorbar(
                [x * dodge for x in xs], ys, yerr=es, capsize=2, label=label, markerfacecolor="none", **style
            )
        ax.set_xscale("log")
        ipcs = sorted({i for v in by_method.values() for i in v} - {0})
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel(f"test accuracy (%), {model}")
        ax.grid(alpha=0.3, lw=0.5)
        _legend_below(fig, *ax.get_legend_handles_labels())
        return save_figure(fig, path, caption or f"mean ± std over every {model} model of every seed")


def loss_curves(chosen: list[Folder], path: Path, labels: dict[Path, str] | None = None) -> Path | None:
    """The matching loss against the step (metrics.jsonl), a panel per IPC, a line per method
    (`labels`: each folder's row label; its folder's label where none), one style per method
    across the panels and one legend below them."""
    logged = [(r, read_jsonl(r.path / METRICS, METRICS_ROW)) for r in chosen if (r.path / METRICS).exists()]
    logged = [(r, rows) for r, rows in logged if rows]
    if not logged:
        return None
    ipcs = sorted({r.ipc for r, _ in logged})
    names = {}
    for r, _ in logged:
        name = (labels or {}).get(r.path, r.label)
        names[r.path] = name if r.group != "runs" else f"{name} ({r.path.name})"
    order = sorted(set(names.values()), key=row_order)
    cols = min(len(ipcs), 2)
    with paper_style():
        long = max(map(len, order)) > 24
        legend = 0.14 * (len(order) if long else _rows(len(order), 3))
        fig = figure(COLUMN_IN * cols, 2.4 * _rows(len(ipcs), 2) + legend + 0.3)
        axes = fig.subplots(_rows(len(ipcs), 2), cols, squeeze=False).flatten()
        for ax, ipc in zip(axes, ipcs, strict=False):
            for r, rows in logged:
                if r.ipc == ipc:
                    name = names[r.path]
                    style = series_style(order.index(name))
                    steps = [x["step"] for x in rows]
                    loss = [x["loss"] for x in rows]
                    ax.plot(
                        steps,
                        loss,
                        label=name,
                        markevery=max(len(rows) // 8, 1),
                        markerfacecolor="none",
                        **style,
                    )
            ax.set_yscale("log")
            ax.set_xlabel("distillation step")
            ax.set_ylabel("matching loss (log scale)")
            ax.set_title(f"IPC {ipc}")
            ax.grid(alpha=0.3, lw=0.5)
        for ax in axes[len(ipcs) :]:
            ax.set_visible(False)
        seen: dict[str, Any] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(label, handle)
        _legend_below(fig, [seen[n] for n in order if n in seen], [n for n in order if n in seen])
        return save_figure(fig, path, "the loss each method minimises, on its own scale (DM's is not ATOM's)")


def nas_scatter(summary: dict[str, Any], path: str | Path) -> Path:
    """Proxy accuracy against true accuracy, a colour and marker per proxy (nas.json's summary)."""
    truth = summary["proxies"].get("whole", {}).get("accuracy", {})
    s = summary["settings"]
    proxies = [(k, p) for k, p in summary["proxies"].items() if k != "whole"]
    with paper_style():
        fig = figure(COLUMN_IN, 2.9 + 0.14 * _rows(len(proxies), 3))
        ax = fig.add_subplot()
        for i, (label, p) in enumerate(proxies):
            archs = [a for a in p["accuracy"] if a in truth]
            rho = cell(p["spearman_all"], ".2f")
            style = series_style(i)
            ax.scatter(
                [truth[a] for a in archs],
                [p["accuracy"][a] for a in archs],
                s=16,
                label=f"{label} (ρ {rho})",
                facecolors="none",
                edgecolors=style["color"],
                marker=style["marker"],
            )
        ax.set_xlabel("accuracy trained on the whole data (%)")
        ax.set_ylabel("accuracy trained on the proxy (%)")
        ax.grid(alpha=0.3, lw=0.5)
        _legend_below(fig, *ax.get_legend_handles_labels())
        caption = f"{s['dataset']}, space {s['space_name']}: proxy against truth, one point per architecture"
        return save_figure(fig, Path(path), caption)
