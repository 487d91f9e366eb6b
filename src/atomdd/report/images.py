"""Pictures of sets: PNG grids (a row per class, class names on the rows; ZCA sets contrast-stretched
for display), `atomdd show`, and the attention maps that drive the method.

A run's figures are drawn from its folder (run.json, the set file, and the dataset it names), never
from a live run, so any finished run can be drawn again. Matplotlib is used through its
object-oriented API (`Figure`): the library never selects a backend. This is the one module of
`report/` that needs torch (a set's pixels, a network's attention); the report imports it only
where a set has no grid.png to copy.
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
from atomdd.distillation.step import network, run_pool
from atomdd.errors import AtomddError
from atomdd.folders.layout import ATTENTION_PNG, GRID_PNG, RUN_FILE, SHOW_PNG, safe_name
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


def display_images(syn: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A set's images as [0, 1] pictures (a factor set's decoded ones, what a model trains on),
    their labels, and a caption saying how: the preprocessing inverted; a ZCA set then stretched
    per image (its pixels, pushed by the distillation, reach several times real images' spread, so
    a plain inverse clips). The set's own data is untouched."""
    images, labels = syn.decoded()
    raw = syn.preprocess().inverse(images.detach().float().cpu(), clamp=False)
    decoded = f"; the {syn.factor}×{syn.factor} tiles of each stored image decoded" if syn.factor != 1 else ""
    if syn.preprocess_meta.get("zca"):
        how = "ZCA inverted; each image contrast-stretched to its 1st–99th percentile for display"
        return stretch(raw), labels, how + decoded
    return raw.clamp(0, 1), labels, "normalisation inverted, clipped to [0, 1]" + decoded


# a grid is pixels: PNG, or the same pixels in a PDF page (for a paper's figure files)
_GRID_FORMATS = {".png": "PNG", ".pdf": "PDF"}


def save_grid(images01: torch.Tensor, labels: torch.Tensor, path: str | Path, **kwargs: Any) -> Path:
    """`grid_image` (same arguments) as a PNG or PDF file, as `path`'s suffix says."""
    fmt = _GRID_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise AtomddError(f"{path}: a grid of images is a .png or .pdf file")
    img = grid_image(images01, labels, **kwargs)
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"resolution": 200.0} if fmt == "PDF" else {}))
    return Path(path)


def set_caption(syn: Any) -> str:
    """What a set is, in a line under its pictures: method, dataset, IPC, steps, seed."""
    meta = syn.meta
    parts = [str(meta.get("method", "a set")), f"{syn.dataset}" if isinstance(syn.dataset, str) else ""]
    parts += [
        f"IPC {meta['ipc']}" if "ipc" in meta else "",
        f"factor {syn.factor}" if syn.factor != 1 else "",
        f"{meta['steps']} steps" if "steps" in meta else "",
    ]
    parts += [f"seed {meta['seed']}" if "seed" in meta else ""]
    return ", ".join(p for p in parts if p)


def grid_image(
    images01: torch.Tensor,
    labels: torch.Tensor,
    max_per_class: int = 10,
    pad: int = 2,
    class_names: Sequence[str] = (),
    size: int = 64,
    caption: str = "",
) -> Image.Image:
    """One row per class (in label order), up to `max_per_class` images, the class name at the left
    of each row (its index where no names are known); images upscaled to about `size` pixels;
    `caption` (what the set is) in a line above."""
    from PIL import ImageDraw, ImageFont

    classes = sorted(set(labels.tolist()))
    names = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    cols = min(max_per_class, max(int((labels == c).sum()) for c in classes))
    h, w = images01.shape[2:]
    zoom = max(1, size // max(h, w))
    ch, cw = h * zoom + pad, w * zoom + pad
    font = ImageFont.load_default(size=max(10, min(16, ch // 3)))
    left = max(int(font.getlength(n)) for n in names) + 12  # the class-name column
    top = ch // 2 + 8 if caption else 0  # the caption's line, as wide as it needs
    width = max(left + cols * cw + pad, int(font.getlength(caption)) + 2 * pad + 4)
    canvas = np.full((top + len(classes) * ch + pad, width, 3), 255, np.uint8)
    pixels = _to_uint8(images01.detach().float().cpu())
    for r, c in enumerate(classes):
        for j, i in enumerate(torch.nonzero(labels == c).flatten()[:cols].tolist()):
            tile = pixels[i].repeat(zoom, 0).repeat(zoom, 1)
            x0 = left + pad + j * cw
            canvas[top + pad + r * ch : top + pad + r * ch + h * zoom, x0 : x0 + w * zoom] = tile
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for r, name in enumerate(names):
        y = top + pad + r * ch + (ch - pad) // 2
        draw.text((left - 6, y), name, fill=(0, 0, 0), font=font, anchor="rm")
    if caption:
        draw.text((pad + 2, top // 2 + 1), caption, fill=(0, 0, 0), font=font, anchor="lm")
    return img


def show(
    path: str | Path, out: str | Path | None = None, klass: str | int | None = None, attention: bool = False
) -> Path:
    """`atomdd show`: a set's grid (a row per class) or one class enlarged (`klass`: its index or
    name), captioned, as a PNG or PDF (a factor set's decoded images); default `<set folder>/show.png`
    or `show-<class>.png`. With `attention`, the run's attention maps drawn again from its folder
    (PNG, or vector PDF / SVG; default `<run folder>/attention.png`)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if attention:
        if not (folder / RUN_FILE).is_file():
            raise AtomddError(f"{folder} holds no run.json: attention maps are a distillation run's")
        return save_run_attention(folder, Path(out) if out else folder / ATTENTION_PNG)
    syn = load_synthetic(path)
    images, labels, _ = display_images(syn)
    names = list(syn.classes) or [str(c) for c in range(int(labels.max()) + 1)]
    if klass is None:
        target = Path(out) if out else folder / SHOW_PNG
        return save_grid(images, labels, target, class_names=names, caption=set_caption(syn))
    k = names.index(str(klass)) if str(klass) in names else int(klass) if str(klass).isdigit() else -1
    if not 0 <= k < len(names) or not (labels == k).any():
        raise AtomddError(f"no class {klass!r} in {path}; its classes: {', '.join(names)}")
    pick = labels == k
    n = int(pick.sum())
    per_row = min(n, 5)
    rows = torch.arange(n) // per_row  # several rows of the one class; the name on each
    target = Path(out) if out else folder / f"show-{safe_name(names[k])}.png"
    return save_grid(
        images[pick],
        rows,
        target,
        max_per_class=per_row,
        class_names=[names[k]] * len(rows),
        size=192,
        caption=set_caption(syn),
    )


@torch.no_grad()
def save_attention(
    net: FeatureModel,
    real: list[torch.Tensor],
    syn: list[torch.Tensor],
    class_names: list[str],
    match: MatchConfig,
    path: str | Path,
    caption: str = "",
) -> Path:
    """Per class (a row each): the mean spatial attention of real and of synthetic images at each
    matched block, on one colour scale per block (its colour bar below), and the channel profile of
    the last matched block (channels in the order of the real images' attention): what the loss
    pulls together. PNG, or vector PDF / SVG, as `path`'s suffix says."""
    from matplotlib.figure import Figure

    from atomdd.report.charts import FONT_PT, paper_style, save_figure, series_style

    feats_r = [net.features(x) for x in real]
    feats_s = [net.features(x) for x in syn]
    layers = match.layer_indices(len(feats_r[0].activations)) or [0]
    maps = {  # (block, real or syn) → each class's mean map
        (layer, kind): [
            spatial_attention(f.activations[layer], match.p_spatial)
            .mean(0)
            .view(f.activations[layer].shape[2:])
            for f in feats
        ]
        for layer in layers
        for kind, feats in (("real", feats_r), ("synthetic", feats_s))
    }
    ncols = 2 * len(layers) + 1
    with paper_style():
        fig = Figure(figsize=(1.15 * ncols + 0.6, 0.95 * len(real) + 1.1), layout="constrained")
        axes = fig.subplots(len(real), ncols, squeeze=False, width_ratios=[1] * (ncols - 1) + [1.6])
        for j, layer in enumerate(layers):
            both = torch.stack([m for kind in ("real", "synthetic") for m in maps[(layer, kind)]])
            lo, hi = float(both.min()), float(both.max())
            for k, kind in enumerate(("real", "synthetic")):
                for row, amap in enumerate(maps[(layer, kind)]):
                    ax = axes[row, 2 * j + k]
                    image = ax.imshow(amap.cpu().numpy(), cmap="inferno", vmin=lo, vmax=hi)
                    ax.set_xticks([])
                    ax.set_yticks([])
                axes[0, 2 * j + k].set_title(f"{kind}\nblock {layer}")
            bar = fig.colorbar(image, ax=axes[:, 2 * j : 2 * j + 2], location="bottom", shrink=0.9, aspect=12)
            bar.set_label(f"spatial attention, block {layer}")
            bar.ax.tick_params(labelsize=FONT_PT - 2)
        for row, name in enumerate(class_names):
            axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center")
            layer = layers[-1]
            prof_r = channel_attention(feats_r[row].activations[layer], match.p_channel).mean(0).cpu()
            prof_s = channel_attention(feats_s[row].activations[layer], match.p_channel).mean(0).cpu()
            order = torch.argsort(prof_r, descending=True)
            ax = axes[row, -1]
            ax.plot(prof_r[order].numpy(), label="real", color=series_style(0)["color"])
            ax.plot(prof_s[order].numpy(), label="synthetic", color=series_style(1)["color"], ls="--")
            ax.tick_params(labelsize=FONT_PT - 2)
            if row < len(real) - 1:
                ax.set_xticklabels([])
        axes[0, -1].set_title(f"channel attention\nblock {layers[-1]}")
        axes[0, -1].legend(frameon=False, fontsize=FONT_PT - 2, loc="upper right")
        axes[-1, -1].set_xlabel("channel (by real attention)")
        return save_figure(fig, Path(path), caption)


def save_run_figures(out: str | Path, data: Dataset | None = None, classes_shown: int = 10) -> None:
    """grid.png (after inverting the preprocessing; a factor set's decoded images) and attention.png
    (`save_run_attention`) of the distillation run in `out`, each with its caption. `data`: the
    run's dataset if already loaded."""
    out = Path(out)
    result = load_synthetic(out)
    images, labels, _ = display_images(result)
    save_grid(images, labels, out / GRID_PNG, class_names=result.classes, caption=set_caption(result))
    save_run_attention(out, out / ATTENTION_PNG, data, classes_shown)


def save_run_attention(out: Path, path: Path, data: Dataset | None = None, classes_shown: int = 10) -> Path:
    """The attention maps of the run in `out` for its first `classes_shown` classes: step 0's
    network, up to 64 real images of each class (its first) and the synthetic ones."""
    run = json.loads((out / RUN_FILE).read_text())
    cfg = DistillConfig.from_dict(run["config"])
    result = load_synthetic(out)
    prep = result.preprocess()
    data = as_dataset(data if data is not None else cfg.dataset, cfg.run.data_root)
    k = min(classes_shown, data.num_classes)
    cpu = torch.device("cpu")
    net = network(cfg, data.channels, data.num_classes, data.image_size, 0, cpu, run_pool(cfg))
    real = [prep(data.train_images[idx[:64]]) for idx in data.class_indices()[:k]]
    decoded, labels = result.decoded()
    syn = [decoded[labels == c] for c in range(k)]
    caption = (
        f"{set_caption(result)}: attention of step 0's network (p_spatial {cfg.match.p_spatial:g}, "
        f"p_channel {cfg.match.p_channel:g}), real against synthetic, {k} of {data.num_classes} classes"
    )
    return save_attention(net, real, syn, list(data.classes[:k]), cfg.match, path, caption)
