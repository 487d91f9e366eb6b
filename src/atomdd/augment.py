"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), vectorised over groups.

One `draw` samples a transform per group: one operation of the strategy and its magnitude. `apply`
maps each sample to its group's transform, so the real and synthetic images of a class (one group)
get the identical transform in one call, for every class at once. Every operation is differentiable
with respect to the pixels. A draw with one group per sample is ordinary (non-siamese) DSA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from atomdd.settings import DSA_DEFAULT, dsa_ops


@dataclass(frozen=True)
class DSAConfig:
    """The published DSA parameters; `strategy` lists the operations one is drawn from."""

    strategy: str = DSA_DEFAULT
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125  # max translation, fraction of the side
    cutout: float = 0.5  # side of the erased square, fraction of the side
    flip: float = 0.5  # probability
    scale: float = 1.2  # factor range [1/scale, scale]
    rotate: float = 15.0  # degrees, ±

    def ops(self) -> tuple[str, ...]:
        return dsa_ops(self.strategy)


@dataclass(frozen=True)
class Draw:
    """Per-group parameters; every operation other than the group's own is the identity."""

    color: torch.Tensor  # G, bool: brightness, saturation and contrast apply
    brightness: torch.Tensor  # G, added
    saturation: torch.Tensor  # G, factor around the per-pixel channel mean
    contrast: torch.Tensor  # G, factor around the image mean
    flip: torch.Tensor  # G, bool
    theta: torch.Tensor  # G×2×3 affine sampling matrix (crop translation, scale, rotation)
    geometric: torch.Tensor  # G, bool: theta is not the identity
    cut: torch.Tensor  # G×4 long: row0, row1, col0, col1 of the erased square (empty when row0 == row1)

    def to(self, device: torch.device | str) -> Draw:
        return Draw(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def apply(self, x: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        """Augment N×C×H×W `x`; sample i gets the transform of group `group[i]` (default: i)."""
        p = self if group is None else Draw(**{f.name: getattr(self, f.name)[group] for f in fields(self)})
        n, _, h, w = x.shape
        if p.brightness.shape[0] != n:
            raise ValueError(f"draw has {p.brightness.shape[0]} transforms for {n} samples")
        dev = x.device
        view = (n, 1, 1, 1)
        if bool(p.color.any()):
            y = x + p.brightness.view(view)
            mean = y.mean(dim=1, keepdim=True)
            y = (y - mean) * p.saturation.view(view) + mean
            mean = y.mean(dim=(1, 2, 3), keepdim=True)
            y = (y - mean) * p.contrast.view(view) + mean
            x = torch.where(p.color.view(view), y, x)
        if bool(p.flip.any()):
            x = torch.where(p.flip.view(view), x.flip(3), x)
        if bool(p.geometric.any()):
            idx = torch.nonzero(p.geometric).flatten()
            sub = x.index_select(0, idx)
            grid = F.affine_grid(
                p.theta.index_select(0, idx).to(x.dtype), list(sub.shape), align_corners=True
            )
            x = x.index_copy(0, idx, F.grid_sample(sub, grid, align_corners=True))
        if not bool((p.cut[:, 1] > p.cut[:, 0]).any()):
            return x
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        r0, r1, c0, c1 = (p.cut[:, i].view(n, 1, 1) for i in range(4))
        erased = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        return x * (~erased).unsqueeze(1).to(x.dtype)


def draw(
    groups: int,
    size: tuple[int, int],
    generator: torch.Generator,
    config: DSAConfig = DSAConfig(),
    device: torch.device | str = "cpu",
) -> Draw:
    """Sample one transform per group on the CPU generator (device-independent and reproducible)."""
    ops = config.ops()
    h, w = size
    g = groups
    gen = generator

    def rand() -> torch.Tensor:
        return torch.rand(g, generator=gen)

    # Draw every magnitude whatever the op, so the random stream does not depend on the op chosen.
    op = torch.randint(0, max(len(ops), 1), (g,), generator=gen)
    bright, sat, con = (
        (rand() - 0.5) * config.brightness,
        rand() * config.saturation,
        rand() + config.contrast,
    )
    flip = rand() < config.flip
    sh, sw = int(h * config.crop + 0.5), int(w * config.crop + 0.5)
    ty = torch.randint(-sh, sh + 1, (g,), generator=gen)
    tx = torch.randint(-sw, sw + 1, (g,), generator=gen)
    lo = 1.0 / config.scale
    sx, sy = rand() * (config.scale - lo) + lo, rand() * (config.scale - lo) + lo
    angle = (rand() - 0.5) * 2 * config.rotate / 180 * math.pi
    ch, cw = int(h * config.cutout + 0.5), int(w * config.cutout + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (g,), generator=gen)
    cx = torch.randint(0, w + (1 - cw % 2), (g,), generator=gen)

    def chosen(name: str) -> torch.Tensor:
        return op == ops.index(name) if name in ops else torch.zeros(g, dtype=torch.bool)

    color, crop, cutout = chosen("color"), chosen("crop"), chosen("cutout")
    scale, rotate = chosen("scale"), chosen("rotate")
    theta = torch.zeros(g, 2, 3)
    theta[:, 0, 0] = torch.where(scale, sx, torch.where(rotate, torch.cos(angle), 1.0))
    theta[:, 1, 1] = torch.where(scale, sy, torch.where(rotate, torch.cos(angle), 1.0))
    theta[:, 0, 1] = torch.where(rotate, -torch.sin(angle), 0.0)
    theta[:, 1, 0] = torch.where(rotate, torch.sin(angle), 0.0)
    # integer-pixel translation, in align_corners=True normalised units (exact pixel shifts)
    theta[:, 0, 2] = torch.where(crop, tx * 2.0 / max(w - 1, 1), 0.0)
    theta[:, 1, 2] = torch.where(crop, ty * 2.0 / max(h - 1, 1), 0.0)
    r0 = (cy - ch // 2).clamp(0, h)
    c0 = (cx - cw // 2).clamp(0, w)
    r1 = (cy - ch // 2 + ch).clamp(0, h)
    c1 = (cx - cw // 2 + cw).clamp(0, w)
    cut = torch.where(
        cutout.unsqueeze(1), torch.stack([r0, r1, c0, c1], 1), torch.zeros(g, 4, dtype=torch.long)
    )
    result = Draw(
        color=color,
        brightness=torch.where(color, bright, 0.0),
        saturation=torch.where(color, sat, 1.0),
        contrast=torch.where(color, con, 1.0),
        flip=chosen("flip") & flip,
        theta=theta,
        geometric=crop | scale | rotate,
        cut=cut,
    )
    return result.to(device)


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    config: DSAConfig = DSAConfig(),
    group: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw and apply in one go: one transform per sample, or per group when `group` is given."""
    groups = x.shape[0] if group is None else int(group.max()) + 1
    return draw(groups, tuple(x.shape[2:]), generator, config, x.device).apply(x, group)
