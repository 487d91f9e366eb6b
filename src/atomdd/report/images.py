"""Pictures and tables: the synthetic images, and the attention maps that drive the method.

Figures of a run are drawn from its folder (run.json, the set file, and the dataset it names), never
from a live run, so any finished run can be drawn again. Matplotlib is used through its
object-oriented API (`Figure`): the library never selects a backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atomdd.data import Dataset, as_dataset
from atomdd.distillation.config import DistillConfig
from atomdd.distillation.step import network
from atomdd.io import atomic_path
from atomdd.matching import channel_attention, spatial_attention
from atomdd.models import FeatureModel
from atomdd.sets import load_synthetic
from atomdd.settings import MatchConfig


def _to_uint8(images01: torch.Tensor) -> np.ndarray:
    """N×C×H×W in [0, 1] → N×H×W×3 uint8."""
    x = (images01.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def stretch(images: torch.Tensor, low: float = 1.0, high: float = 99.0) -> torch.Tensor:
    """Each image scaled on its own so its `low`..`high` percentiles span [0, 1] (for display only)."""
    flat = images.flatten(1).float()
    lo = torch.quantile(flat, low / 100, dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, high / 100, dim=1).view(-1, 1, 1, 1)
    return ((images - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def display_images(syn: Any) -> tuple[torch.Tensor, str]:
    """A set's images as [0, 1] pictures, and a caption saying how: the preprocessing inverted;
    a ZCA set then stretched per image (its pixels, pushed by the distillation, reach several times
    real images' spread, so a plain inverse clips). The set's own data is untouched."""
    raw = syn.preprocess().inverse(syn.images.detach().float().cpu(), clamp=False)
    if syn.preprocess_meta.get("zca"):
        return stretch(
            raw
        ), "ZCA inverted; each image contrast-stretched to its 1st–99th percentile for display"
    return raw.clamp(0, 1), "normalisation inverted, clipped to [0, 1]"


def save_grid(images01: torch.Tensor, labels: torch.Tensor, path: str | Path, **kwargs: Any) -> Path:
    """`grid_image` (same arguments) as a PNG file."""
    img = grid_image(images01, labels, **kwargs)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def grid_image(
    images01: torch.Tensor,
    labels: torch.Tensor,
    max_per_class: int = 10,
    pad: int = 2,
    class_names: Sequence[str] = (),
    size: int = 64,
) -> Image.Image:
    """One row per class (in label order), up to `max_per_class` images, the class name at the left
    of each row (its index where no names are known); images upscaled to about `size` pixels."""
    from PIL import ImageDraw, ImageFont

    classes = sorted(set(labels.tolist()))
    names = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    cols = min(max_per_class, max(int((labels == c).sum()) for c in classes))
    h, w = images01.shape[2:]
    zoom = max(1, size // max(h, w))
    ch, cw = h * zoom + pad, w * zoom + pad
    font = ImageFont.load_default(size=max(10, min(16, ch // 3)))
    left = max(int(font.getlength(n)) for n in names) + 12  # the class-name column
    canvas = np.full((len(classes) * ch + pad, left + cols * cw + pad, 3), 255, np.uint8)
    pixels = _to_uint8(images01.detach().float().cpu())
    for r, c in enumerate(classes):
        for j, i in enumerate(torch.nonzero(labels == c).flatten()[:cols].tolist()):
            tile = pixels[i].repeat(zoom, 0).repeat(zoom, 1)
            x0 = left + pad + j * cw
            canvas[pad + r * ch : pad + r * ch + h * zoom, x0 : x0 + w * zoom] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        draw.text((left - 6, pad + r * ch + (ch - pad) // 2), name, fill=(0, 0, 0), font=font, anchor="rm")
    return img


def show(path: str | Path, out: str | Path | None = None, klass: str | int | None = None) -> Path:
    """`atomdd show`: a set's grid (a row per class) or one class enlarged (`klass`: its index or
    name) as a PNG; default `<set folder>/show.png` or `show-<class>.png`."""
    from atomdd.errors import AtomddError

    syn = load_synthetic(path)
    images, _ = display_images(syn)
    names = list(syn.classes) or [str(c) for c in range(int(syn.labels.max()) + 1)]
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if klass is None:
        target = Path(out) if out else folder / "show.png"
        return save_grid(images, syn.labels, target, class_names=names)
    k = names.index(str(klass)) if str(klass) in names else int(klass) if str(klass).isdigit() else -1
    if not 0 <= k < len(names) or not (syn.labels == k).any():
        raise AtomddError(f"no class {klass!r} in {path}; its classes: {', '.join(names)}")
    pick = syn.labels == k
    n = int(pick.sum())
    per_row = min(n, 5)
    rows = torch.arange(n) // per_row  # several rows of the one class; the name on each
    target = Path(out) if out else folder / f"show-{_safe(names[k])}.png"
    return save_grid(
        images[pick], rows, target, max_per_class=per_row, class_names=[names[k]] * len(rows), size=192
    )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


@torch.no_grad()
def save_attention(
    net: FeatureModel,
    real: list[torch.Tensor],
    syn: list[torch.Tensor],
    class_names: list[str],
    match: MatchConfig,
    path: str | Path,
) -> Path:
    """Per class: mean spatial attention of real vs synthetic at each matched layer, and the
    channel profile (real order) of the last matched layer: what the loss pulls together."""
    from matplotlib.figure import Figure

    feats_r = [net.features(x) for x in real]
    feats_s = [net.features(x) for x in syn]
    layers = match.layer_indices(len(feats_r[0].activations)) or [0]
    ncols = 2 * len(layers) + 1
    fig = Figure(figsize=(2.0 * ncols, 2.0 * len(real)))
    axes = fig.subplots(len(real), ncols, squeeze=False)
    for row, (fr, fs, name) in enumerate(zip(feats_r, feats_s, class_names, strict=True)):
        for j, layer in enumerate(layers):
            for k, (feats, kind) in enumerate(((fr, "real"), (fs, "syn"))):
                f = feats.activations[layer]
                amap = spatial_attention(f, match.p_spatial).mean(0).view(f.shape[2:]).cpu()
                ax = axes[row, 2 * j + k]
                ax.imshow(amap.numpy(), cmap="inferno")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{kind} spatial, block {layer}", fontsize=7)
            axes[row, 0].set_ylabel(name, fontsize=8)
        layer = layers[-1]
        prof_r = channel_attention(fr.activations[layer], match.p_channel).mean(0).cpu()
        prof_s = channel_attention(fs.activations[layer], match.p_channel).mean(0).cpu()
        order = torch.argsort(prof_r, descending=True)
        ax = axes[row, -1]
        ax.plot(prof_r[order].numpy(), label="real", lw=1)
        ax.plot(prof_s[order].numpy(), label="syn", lw=1)
        ax.tick_params(labelsize=6)
        ax.set_ylabel("channel attention (L2-normalised)", fontsize=6)
        if row == 0:
            ax.set_title(f"channel profile, block {layer}", fontsize=7)
            ax.legend(fontsize=6)
        if row == len(real) - 1:
            ax.set_xlabel("channel (by real attention)", fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def save_run_figures(out: str | Path, data: Dataset | None = None, classes_shown: int = 4) -> None:
    """grid.png (after inverting the preprocessing) and attention.png for the first few classes of
    the distillation run in `out`: step 0's network, up to 64 real images per class (the first of
    each class) and the synthetic ones. `data`: the run's dataset if already loaded."""
    out = Path(out)
    run = json.loads((out / "run.json").read_text())
    cfg = DistillConfig.from_dict(run["config"])
    result = load_synthetic(out)
    prep = result.preprocess()
    images, _ = display_images(result)
    save_grid(images, result.labels, out / "grid.png", class_names=result.classes)
    data = as_dataset(data if data is not None else cfg.dataset, cfg.run.data_root)
    k = min(classes_shown, data.num_classes)
    net = network(cfg, data.channels, data.num_classes, data.image_size, 0, torch.device("cpu"))
    real = [prep(data.train_images[idx[:64]]) for idx in data.class_indices()[:k]]
    syn = [result.images[result.labels == c] for c in range(k)]
    save_attention(net, real, syn, list(data.classes[:k]), cfg.match, out / "attention.png")


# --- tables ----------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: one header row, its rule, one line per row (cells as `str` gives them)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(report: dict[str, Any]) -> str:
    """The model × accuracy table of an evaluation report (eval.json), with a title line."""
    first = report["config"].get("test_limit", 0)
    header = [
        "model",
        "accuracy (%)",
        *([f"first {first} test images (%)"] if first else []),
        "runs",
        "seconds",
    ]
    rows = []
    for name, r in report["models"].items():
        extra = [f"{r['first']['mean']:.2f} ± {r['first']['std']:.2f}"] if first else []
        rows.append(
            [name, f"{r['mean']:.2f} ± {r['std']:.2f}", *extra, len(r["runs"]), f"{r['seconds']:.1f}"]
        )
    s = report.get("set", {})
    what = f"{s.get('kind', '?')} set of {s.get('images', '?')} images"
    title = f"{report.get('dataset', '?')}, {what}, {report['config']['epochs']} epochs"
    return title + "\n" + markdown_table(header, rows)


def grid_table(results: dict[str, dict[int, dict]], budget: Any, against: str) -> str:
    """The table of a grid (`jobs.collect`): accuracy and paired difference per IPC, a row per method."""
    title = [
        f"{budget.dataset}, {budget.steps} distillation steps, {budget.epochs} epochs × {budget.runs} "
        "models: test accuracy % (mean ± std over all models of all seeds; n = seeds)",
        f"Δ: paired difference to {against} over the (seed, run) pairs both have: mean ± std over runs "
        "/ ± std of the per-seed mean differences, and how many runs / seeds are ahead",
    ]
    ipcs = sorted({i for by_ipc in results.values() for i in by_ipc})
    lim = budget.test_limit
    header = ["method"]
    for i in ipcs:
        header += [f"IPC {i}", f"Δ IPC {i}", *([f"IPC {i}, first {lim}"] if lim else [])]
    rows = []
    for spec, by_ipc in results.items():
        cells = [spec]
        for i in ipcs:
            r = by_ipc.get(i)
            d = r and r.get("paired")
            cells.append(f"{r['mean']:.1f} ± {r['std']:.1f} (n={len(r['seeds'])})" if r else "–")
            cells.append(
                f"{d['mean']:+.2f} ± {d['std']:.2f} / ± {d['seed_std']:.2f} "
                f"({d['wins']}/{d['n']} runs, {d['seed_wins']}/{d['seeds']} seeds)"
                if d
                else "–"
            )
            if lim:
                has = r and r["first_mean"] is not None
                cells.append(f"{r['first_mean']:.1f} ± {r['first_std']:.1f}" if has else "–")
        rows.append(cells)
    return "\n".join(title) + "\n" + markdown_table(header, rows)


# --- architecture search (nas.json) -----------------------------------------------------------------


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def nas_table(report: dict[str, Any]) -> str:
    """The published layout: a column per proxy and the whole dataset; the true accuracy of the
    architecture each ranks first, rank correlations with the truth, time and images stored."""
    proxies = report["proxies"]
    s = report["settings"]
    rows = [
        ["best arch. true accuracy (%)", *[_cell(p["best_true_accuracy"], ".2f") for p in proxies.values()]],
        ["Spearman, whole space", *[_cell(p["spearman_all"], ".2f") for p in proxies.values()]],
        ["Spearman, top 20 %", *[_cell(p["spearman_top20"], ".2f") for p in proxies.values()]],
        ["Kendall, whole space", *[_cell(p["kendall_all"], ".2f") for p in proxies.values()]],
        ["Kendall, top 20 %", *[_cell(p["kendall_top20"], ".2f") for p in proxies.values()]],
        ["time (min)", *[_cell(p["minutes"], ".1f") for p in proxies.values()]],
        ["images stored", *[_cell(p["images"], "d") for p in proxies.values()]],
    ]
    header = ["", *[("whole dataset" if k == "whole" else k) for k in proxies]]
    n = max((p["architectures"] for p in proxies.values()), default=0)
    title = (
        f"{s['dataset']}, space {s['space_name']}: {n} architectures ({len(report['skipped'])} skipped), "
        f"seeds {', '.join(map(str, s['seeds']))}; proxy {s['epochs']} epochs, early stop "
        f"{s['early_epochs']}, whole dataset {s['truth_epochs']}"
    )
    lines = [title, markdown_table(header, rows)]
    lines += [f"skipped {k['arch']}: {k['reason']}" for k in report["skipped"]]
    return "\n".join(lines)


def save_nas_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Proxy accuracy against true accuracy, one colour per proxy (its own Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    truth = report["proxies"].get("whole", {}).get("accuracy", {})
    for label, p in report["proxies"].items():
        if label == "whole":
            continue
        archs = [a for a in p["accuracy"] if a in truth]
        rho = _cell(p["spearman_all"], ".2f")
        ax.scatter(
            [truth[a] for a in archs], [p["accuracy"][a] for a in archs], s=14, label=f"{label} (ρ {rho})"
        )
    ax.set_xlabel("accuracy trained on the whole data (%)")
    ax.set_ylabel("accuracy trained on the proxy (%)")
    ax.set_title(f"{report['settings']['dataset']}: architecture search proxies", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
