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
    images, labels, _ = display_images(syn)
    names = list(syn.classes) or [str(c) for c in range(int(labels.max()) + 1)]
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if klass is None:
        target = Path(out) if out else folder / SHOW_PNG
        return save_grid(images, labels, target, class_names=names)
    k = names.index(str(klass)) if str(klass) in names else int(klass) if str(klass).isdigit() else -1
    if not 0 <= k < len(names) or not (labels == k).any():
        raise AtomddError(f"no class {klass!r} in {path}; its classes: {', '.join(names)}")
    pick = labels == k
    n = int(pick.sum())
    per_row = min(n, 5)
    rows = torch.arange(n) // per_row  # several rows of the one class; the name on each
    target = Path(out) if out else folder / f"show-{safe_name(names[k])}.png"
    return save_grid(
        images[pick], rows, target, max_per_class=per_row, class_names=[names[k]] * len(rows), size=192
    )


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
    the distillation run in `out`: step 0's network (from its pool, if it used one), up to 64 real
    images per class (the first of each class) and the synthetic ones (decoded). `data`: the run's
    dataset if already loaded."""
    out = Path(out)
    run = json.loads((out / RUN_FILE).read_text())
    cfg = DistillConfig.from_dict(run["config"])
    result = load_synthetic(out)
    prep = result.preprocess()
    images, labels, _ = display_images(result)
    save_grid(images, labels, out / GRID_PNG, class_names=result.classes)
    data = as_dataset(data if data is not None else cfg.dataset, cfg.run.data_root)
    k = min(classes_shown, data.num_classes)
    cpu = torch.device("cpu")
    net = network(cfg, data.channels, data.num_classes, data.image_size, 0, cpu, run_pool(cfg))
    real = [prep(data.train_images[idx[:64]]) for idx in data.class_indices()[:k]]
    decoded, labels = result.decoded()
    syn = [decoded[labels == c] for c in range(k)]
    save_attention(net, real, syn, list(data.classes[:k]), cfg.match, out / ATTENTION_PNG)
