"""The distances the matching loss takes between a class's real and synthetic statistics
(`matching.matching_loss`), registered under the name `MatchConfig.distance` (`--distance`) selects.

A distance is a small function `(syn, real, seed) → 0-d tensor`: `syn` and `real` are K × n × D
(a row of samples per class: each image's attention vector or embedding; the real side holds no
autograd graph), the result is summed over the classes and differentiable in `syn`; `seed` is the
step's own seed for a distance that draws (`cf`), the same for every class chunk and every rank.
Which terms of the loss a distance compares is decided in one place, `matching.term_distance`: the
embedding term, where the published codes use these distances; the attention terms keep
`squared-l2` of their means, the published methods' definition.

| name | what | from |
|---|---|---|
| `squared-l2` | ‖mean syn − mean real‖² (linear-kernel MMD): the published methods' | DM, DataDAM, ATOM |
| `mean-cov` | `squared-l2` + 50 · ‖Σ_syn − Σ_real‖²_F / D | DSDM (×50/dim) |
| `mmd` | Gaussian-kernel MMD², 5 bandwidths around the real samples' median distance | M3D |
| `cf` | mean over 4 096 frequencies of ‖φ_real(t) − φ_syn(t)‖² | NCFM |

A new distance is a function here and its name in `DISTANCES` (docs/architecture.md walks through
one; docs/beyond.md describes these). No torch at import (the settings check the name without it):
a distance imports torch inside.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

# DSDM's covariance weight: 50, over the feature dimension
COVARIANCE_WEIGHT = 50.0
# Gaussian-kernel bandwidths, as multiples of the median heuristic (M3D's 5 kernels, ratio 2)
MMD_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
CF_FREQUENCIES = 4096  # NCFM's


def squared_l2(syn: Any, real: Any, seed: int = 0) -> Any:
    """‖mean syn − mean real‖² summed over classes: the published methods' distance (DM, DataDAM,
    ATOM), computed exactly as the means-only loss always was."""
    return (syn.mean(1) - real.mean(1)).pow(2).sum()


def _centred_gram_norms(a: Any, b: Any) -> Any:
    """‖Aᵀ B‖²_F per class for centred K×n×D samples, through the n×n products (n ≪ D here)."""
    return (a @ b.transpose(1, 2)).pow(2).sum((1, 2))


def mean_cov(syn: Any, real: Any, seed: int = 0) -> Any:
    """`squared-l2` plus `COVARIANCE_WEIGHT` · ‖Σ_syn − Σ_real‖²_F / D per class, Σ the unbiased
    covariance of the class's samples (DSDM). ‖Σ_s − Σ_r‖² = ‖Σ_s‖² + ‖Σ_r‖² − 2⟨Σ_s, Σ_r⟩,
    each through n×n products, never a D×D matrix. With one synthetic sample a class (IPC 1 without
    factor images) Σ_syn is 0 and the covariance term has no gradient: only the means move."""
    d = syn.shape[-1]
    s, r = syn - syn.mean(1, keepdim=True), real - real.mean(1, keepdim=True)
    ns, nr = max(syn.shape[1] - 1, 1), max(real.shape[1] - 1, 1)
    gap = (
        _centred_gram_norms(s, s) / ns**2
        + _centred_gram_norms(r, r) / nr**2
        - 2 * _centred_gram_norms(s, r) / (ns * nr)
    )
    return squared_l2(syn, real) + COVARIANCE_WEIGHT * gap.clamp_min(0).sum() / d


def _median_bandwidth(syn: Any, real: Any) -> Any:
    """Per class, the median squared distance between distinct real samples (K×1×1, no gradient);
    with one real sample a class, the median distance of the real sample to the synthetic ones."""
    import torch

    with torch.no_grad():
        n = real.shape[1]
        if n > 1:
            d2 = torch.cdist(real, real).pow(2)
            off = ~torch.eye(n, dtype=torch.bool, device=real.device)
            med = d2[:, off].median(1).values
        else:
            med = torch.cdist(real, syn).pow(2).flatten(1).median(1).values
        return med.clamp_min(1e-12).view(-1, 1, 1)


def mmd(syn: Any, real: Any, seed: int = 0) -> Any:
    """Gaussian-kernel MMD² (the biased estimate: ≥ 0, zero for identical samples) per class,
    summed: k(x, y) = Σ_b exp(−‖x − y‖² / (2 b σ²)) over `MMD_BANDWIDTHS` b, σ² the median
    heuristic of the class's real samples (M3D)."""
    import torch

    sigma2 = _median_bandwidth(syn, real)

    def kernel_mean(a: Any, b: Any) -> Any:
        d2 = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(1) - 2 * a @ b.transpose(1, 2)
        d2 = d2.clamp_min(0)
        return sum(torch.exp(-d2 / (2 * w * sigma2)) for w in MMD_BANDWIDTHS).mean((1, 2))

    return (kernel_mean(syn, syn) + kernel_mean(real, real) - 2 * kernel_mean(syn, real)).sum()


@lru_cache(maxsize=1)
def _frequencies(seed: int, d: int, device: str) -> Any:
    """`CF_FREQUENCIES` × d standard normal frequencies from `seed` on the CPU generator (identical
    on every device and rank); kept for the step's other class chunks."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, CF_FREQUENCIES, generator=gen).to(device)


def cf(syn: Any, real: Any, seed: int = 0) -> Any:
    """The characteristic-function distance (NCFM): the mean over `CF_FREQUENCIES` frequencies t of
    |φ_real(t) − φ_syn(t)|², φ_X(t) = mean_x exp(i tᵀx), summed over classes. The frequencies are
    drawn each step from its seed, t ~ N(0, I/σ²) with σ² the median heuristic of the class's real
    samples (so tᵀx stays of order one; NCFM learns its sampling distribution instead). In
    expectation over t this is the Gaussian-kernel MMD² at bandwidth σ (Bochner)."""
    import torch

    t = _frequencies(seed, syn.shape[-1], str(syn.device)).to(syn.dtype)
    scale = _median_bandwidth(syn, real).rsqrt()

    def phi(x: Any) -> tuple[Any, Any]:
        proj = (x @ t) * scale  # K × n × F
        return torch.cos(proj).mean(1), torch.sin(proj).mean(1)

    (cr, sr), (cs, ss) = phi(real), phi(syn)
    return ((cr - cs).pow(2) + (sr - ss).pow(2)).mean(1).sum()


DISTANCES: dict[str, Callable[[Any, Any, int], Any]] = {
    "squared-l2": squared_l2,
    "mean-cov": mean_cov,
    "mmd": mmd,
    "cf": cf,
}
DEFAULT = "squared-l2"
