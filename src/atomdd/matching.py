"""The attention mixer: spatial- and channel-wise attention of feature maps, and the matching loss.

ATOM, its channel-only variant, DataDAM and DM are one loss with different weights (DESIGN.md §1):

    L = scale · Σ_k [ Σ_{l in layers} ( w_s‖ā_s(T_k) − ā_s(S_k)‖² + w_c‖ā_c(T_k) − ā_c(S_k)‖² )
                      + λ‖ē(T_k) − ē(S_k)‖² ]

where ā is the class mean of per-sample, L2-normalised attention vectors and ē the class mean of
the embedding. The loss only needs per-class means of the real batch, so `class_statistics` of the
real images is computed once without autograd and the synthetic side is compared against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atomdd.models import Features
from atomdd.settings import MatchConfig


def abs_pow(f: torch.Tensor, p: float) -> torch.Tensor:
    """|f|^p in fp32; even integer powers by repeated squaring (no abs, no exp/log)."""
    f = f.float()
    if p == 2:
        return f.square()
    if p == 4:
        return f.square().square()
    return f.abs().pow(p)


def spatial_attention(f: torch.Tensor, p: float, powered: torch.Tensor | None = None) -> torch.Tensor:
    """B×C×H×W → B×(H·W): Σ_c |f|^p, L2-normalised per sample."""
    powered = abs_pow(f, p) if powered is None else powered
    return F.normalize(powered.sum(1).flatten(1), dim=1)


def channel_attention(f: torch.Tensor, p: float, powered: torch.Tensor | None = None) -> torch.Tensor:
    """B×C×H×W → B×C: Σ_{h,w} |f|^p, L2-normalised per sample."""
    powered = abs_pow(f, p) if powered is None else powered
    return F.normalize(powered.sum((2, 3)), dim=1)


def class_statistics(feats: Features, num_classes: int, cfg: MatchConfig) -> list[torch.Tensor]:
    """Per-class means (K×D each) of every matched quantity; samples are class-major, equal counts."""
    k = num_classes

    def means(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(k, v.shape[0] // k, -1).mean(1)

    stats = []
    for i in cfg.layer_indices(len(feats.activations)):
        f = feats.activations[i]
        shared = (
            abs_pow(f, cfg.p_spatial)
            if cfg.spatial and cfg.channel and cfg.p_spatial == cfg.p_channel
            else None
        )
        if cfg.spatial:
            stats.append(means(spatial_attention(f, cfg.p_spatial, shared)))
        if cfg.channel:
            stats.append(means(channel_attention(f, cfg.p_channel, shared)))
    if cfg.embedding:
        stats.append(means(feats.embedding.float()))
    return stats


def term_weights(num_blocks: int, cfg: MatchConfig) -> list[tuple[str, float]]:
    """(name, weight) of each entry of `class_statistics`, in the same order."""
    out = []
    for i in cfg.layer_indices(num_blocks):
        if cfg.spatial:
            out.append((f"spatial{i}", cfg.spatial))
        if cfg.channel:
            out.append((f"channel{i}", cfg.channel))
    if cfg.embedding:
        out.append(("embedding", cfg.embedding))
    return out


def matching_loss(
    syn_stats: list[torch.Tensor], real_stats: list[torch.Tensor], num_blocks: int, cfg: MatchConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss (summed over classes) and each term's weighted value, for logging."""
    total = syn_stats[0].new_zeros(())
    terms = {}
    for (name, w), s, r in zip(term_weights(num_blocks, cfg), syn_stats, real_stats, strict=True):
        term = cfg.scale * w * (s - r).pow(2).sum()
        terms[name] = term.detach()
        total = total + term
    return total, terms
