"""Rank correlation, in numpy: Spearman's ρ and Kendall's τ-b with average ranks for ties (the
values scipy.stats.spearmanr / kendalltau give), for the architecture search (`nas.py`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the average ranks (nan if either is constant)."""
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (ties counted as scipy's default does; nan if either is constant)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx, sy = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    den = math.sqrt(float(np.abs(sx[iu]).sum() * np.abs(sy[iu]).sum()))
    return float((sx[iu] * sy[iu]).sum() / den) if den > 0 else float("nan")
