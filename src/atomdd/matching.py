"""The attention mixer: spatial- and channel-wise attention of feature maps, and the matching loss.

ATOM, its channel-only variant, DataDAM and DM are one loss with different weights (docs/method.md):

    L = scale · Σ_k [ Σ_{l in layers} ( w_s‖ā_s(T_k) − ā_s(S_k)‖² + w_c‖ā_c(T_k) − ā_c(S_k)‖² )
                      + λ‖ē(T_k) − ē(S_k)‖² ]

where ā is the class mean of per-sample, L2-normalised attention vectors and ē the class mean of
the embedding. `class_statistics` gives each matched quantity per class as samples (K × n × D), the
real side computed once without autograd; a distance (`distances.py`) compares them, and
`term_distance` decides which: the embedding term takes the distance `MatchConfig.distance` names
(the published methods' squared L2 of the means by default; a distribution distance such as
`mmd` compares the samples), the attention terms always their means by squared L2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atomdd.distances import DEFAULT, DISTANCES
from atomdd.models import FeatureModel, Features, Powers, PowerSums
from atomdd.settings import MatchConfig

SPATIAL, CHANNEL = (1,), (2, 3)  # the dimensions an attention map sums over (of B×C×H×W)


class _PowerSums(torch.autograd.Function):
    """Sums of f^p (p = 2 or 4) over several sets of dimensions from one f²: autograd's chain of
    squares, sums and broadcasts takes ≈ 10 passes over the map in the backward, this 4
    (p·f^(p−1) times the broadcast gradients, recomputed from f rather than kept)."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, p: int, *dims: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        powered = f.square()
        if p == 4:
            powered.square_()
        ctx.save_for_backward(f)
        ctx.p, ctx.dims = p, dims
        ctx.set_materialize_grads(False)
        return tuple(powered.sum(d) for d in dims)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        (f,) = ctx.saved_tensors
        total = None
        for g, dims in zip(grads, ctx.dims, strict=True):
            if g is not None:
                for d in dims:
                    g = g.unsqueeze(d)
                total = g if total is None else total + g
        if total is None:
            return (None,) * (2 + len(ctx.dims))
        # in autograd's order, g·2f and (g·f²)·f·4, so the gradient rounds as before
        grad = total * (f * 2.0) if ctx.p == 2 else f.square().mul_(total).mul_(f).mul_(4.0)
        return (grad, None, *(None,) * len(ctx.dims))


def power_sums(f: torch.Tensor, p: float, dims: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Σ |f|^p over each of `dims`, in fp32 at least (bf16 maps are widened); |f|^p computed once for
    all of them."""
    f = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
    if p in (2, 4):  # even powers: no abs, no exp/log, and the fused backward
        return list(_PowerSums.apply(f, int(p), *dims))
    powered = f.abs() if p == 1 else f.abs().pow(p)  # p = 1: the published DataDAM code's power
    return [powered.sum(d) for d in dims]


def spatial_attention(f: torch.Tensor, p: float) -> torch.Tensor:
    """B×C×H×W → B×(H·W): Σ_c |f|^p, L2-normalised per sample."""
    return F.normalize(power_sums(f, p, [SPATIAL])[0].flatten(1), dim=1)


def channel_attention(f: torch.Tensor, p: float) -> torch.Tensor:
    """B×C×H×W → B×C: Σ_{h,w} |f|^p, L2-normalised per sample."""
    return F.normalize(power_sums(f, p, [CHANNEL])[0], dim=1)


def block_powers(num_blocks: int, cfg: MatchConfig) -> Powers:
    """Per block, the powers of the spatial and the channel attention it is matched on (None: that
    attention is not)."""
    matched = set(cfg.layer_indices(num_blocks))
    sp, ch = (cfg.p_spatial if cfg.spatial else None), (cfg.p_channel if cfg.channel else None)
    return [(sp, ch) if i in matched else (None, None) for i in range(num_blocks)]


def _from_sums(sums: PowerSums, embedding: torch.Tensor, k: int, cfg: MatchConfig) -> list[torch.Tensor]:
    """The matched quantities from each block's power sums and the embedding (`term_weights`' order)."""

    def per_class(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(k, v.shape[0] // k, -1)

    stats = [per_class(F.normalize(s.flatten(1), dim=1)) for pair in sums for s in pair if s is not None]
    if cfg.embedding:
        stats.append(per_class(embedding.float()))
    return stats


def class_statistics(feats: Features, num_classes: int, cfg: MatchConfig) -> list[torch.Tensor]:
    """Every matched quantity per class, as samples (K × n × D each); the images are class-major,
    n of each class."""
    sums: PowerSums = []
    for f, (p_sp, p_ch) in zip(feats.activations, block_powers(len(feats.activations), cfg), strict=True):
        if p_sp is not None and p_sp == p_ch:
            sp, ch = power_sums(f, p_sp, [SPATIAL, CHANNEL])
        else:
            sp = None if p_sp is None else power_sums(f, p_sp, [SPATIAL])[0]
            ch = None if p_ch is None else power_sums(f, p_ch, [CHANNEL])[0]
        sums.append((sp, ch))
    return _from_sums(sums, feats.embedding, num_classes, cfg)


def statistics(
    net: FeatureModel, x: torch.Tensor, num_classes: int, cfg: MatchConfig, num_blocks: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`class_statistics` of `net` on the images x, and their embedding: by the network's fused
    path where it has one for x (`FeatureModel.power_sums`: the ConvNet's one pass per block after
    each convolution, without keeping the maps), else from `net.features(x)`."""
    fused = net.power_sums(x, block_powers(num_blocks, cfg))
    if fused is not None:
        sums, embedding = fused
        return _from_sums(sums, embedding, num_classes, cfg), embedding
    feats = net.features(x)
    return class_statistics(feats, num_classes, cfg), feats.embedding


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


def term_distance(name: str, cfg: MatchConfig) -> str:
    """The distance a term is compared by, decided here alone: the embedding term's is
    `cfg.distance` (where the published codes put their distribution distances: DSDM, M3D, NCFM
    match the final features); an attention term's is always squared L2 of the class means,
    what ATOM and DataDAM define (an attention map is an L2-normalised profile, matched on average)."""
    return cfg.distance if name == "embedding" else DEFAULT


def matching_loss(
    syn_stats: list[torch.Tensor],
    real_stats: list[torch.Tensor],
    num_blocks: int,
    cfg: MatchConfig,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss (summed over classes) and each term's weighted value, for logging. `seed`:
    the step's seed of a distance that draws (`distances.cf`)."""
    total = syn_stats[0].new_zeros(())
    terms = {}
    for (name, w), s, r in zip(term_weights(num_blocks, cfg), syn_stats, real_stats, strict=True):
        term = cfg.scale * w * DISTANCES[term_distance(name, cfg)](s, r, seed)
        terms[name] = term.detach()
        total = total + term
    return total, terms
