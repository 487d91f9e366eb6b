"""Invertible preprocessing into a model's input space: [0, 1] → per-channel normalisation → ZCA.

ZCA follows the DC/DM/DataDAM protocol (kornia's `ZCAWhitening(eps=0.1)` fitted on the normalised,
flattened train images, unbiased covariance, T = U·diag((S+eps)^-½)·Uᵀ) but accumulates the
covariance chunk by chunk in float64, so CIFAR's 50 000×3072 train set needs no float copy of the
whole set (kornia's fit needs the set and a centred copy, ~1.2 GB); a test checks both agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from atomdd.errors import AtomddError

_CHUNK = 4096  # images per block when preprocessing a whole split: bounds the float temporaries


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]; float images are taken to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class Normalize:
    """Per-channel (x - mean) / std on N×C×H×W, and its inverse."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise AtomddError(f"normalisation needs one positive std per mean, got mean {mean} std {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != len(self.mean):
            raise AtomddError(f"images have {x.shape[1]} channels, the normalisation {len(self.mean)}")
        shape = (1, -1, 1, 1)
        as_x = {"dtype": x.dtype, "device": x.device}
        return torch.tensor(self.mean, **as_x).view(shape), torch.tensor(self.std, **as_x).view(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return x * std + mean


def _eigh_one_thread(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 eigh on one thread: MKL's threaded eigh collapses when the CPU is shared. Measured at
    D = 3072 on 2 cores: idle 6 s (2 threads) vs 12 s (1); busy 32-102 s vs 11-26 s; and at D = 192
    busy, 4 s vs 8 ms. A bounded one-off cost beats an unbounded one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix.double())
    finally:
        torch.set_num_threads(threads)


class ZCA:
    """ZCA whitening of flattened images, regularised by `eps`, with an exact inverse."""

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = float(eps)
        self.mean: torch.Tensor | None = None  # D, float32
        self.eigvecs: torch.Tensor | None = None  # D×D, float32: what is saved (half the size of T and T⁻¹)
        self.eigvals: torch.Tensor | None = None  # D, float64
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def fitted(self) -> bool:
        return self.eigvecs is not None

    def fit(self, chunks: Iterable[torch.Tensor]) -> ZCA:
        """Fit on batches of samples; their (unbiased) covariance is merged exactly (Chan et al.)."""
        n, mean, m2 = 0, None, None
        for chunk in chunks:
            flat = chunk.reshape(len(chunk), -1).float()
            k = len(flat)
            if k == 0:
                continue
            chunk_mean = flat.mean(0, dtype=torch.float64)
            centred = flat - chunk_mean.float()
            chunk_m2 = (centred.T @ centred).double()
            if mean is None:
                mean, m2 = chunk_mean, chunk_m2
            else:
                delta = chunk_mean - mean
                m2 += chunk_m2 + torch.outer(delta, delta) * (n * k / (n + k))
                mean += delta * (k / (n + k))
            n += k
        if n < 2:
            raise AtomddError(f"ZCA needs at least 2 training images, got {n}")
        eigvals, eigvecs = _eigh_one_thread(m2 / (n - 1))
        self.load(mean.float(), eigvecs.float(), eigvals.clamp_min(0))
        return self

    def load(self, mean: torch.Tensor, eigvecs: torch.Tensor, eigvals: torch.Tensor) -> ZCA:
        """Set a fit; the matrices are rebuilt from the stored float32 eigenvectors, so a reloaded
        fit computes bit-identical outputs."""
        d = mean.numel()
        if eigvecs.shape != (d, d) or eigvals.shape != (d,):
            raise AtomddError(
                f"ZCA state is inconsistent: mean {d}, eigvecs {tuple(eigvecs.shape)}, "
                f"eigvals {tuple(eigvals.shape)}"
            )
        self.mean = mean.float().cpu().contiguous()
        self.eigvecs = eigvecs.float().cpu().contiguous()
        self.eigvals = eigvals.double().cpu().contiguous()
        self._on_device.clear()
        return self

    def _matrices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.fitted:
            raise RuntimeError("ZCA used before fit()")
        if x[0].numel() != self.mean.numel():
            raise AtomddError(f"ZCA was fitted on images of {self.mean.numel()} values, got {x[0].numel()}")
        if x.device not in self._on_device:
            u = self.eigvecs
            scale = (self.eigvals + self.eps).float()
            mats = (self.mean, (u * scale.rsqrt()) @ u.T, (u * scale.sqrt()) @ u.T)
            self._on_device[x.device] = tuple(t.to(x.device) for t in mats)
        return self._on_device[x.device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, matrix, _ = self._matrices(x)
        return ((x.reshape(len(x), -1) - mean) @ matrix).reshape(x.shape)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        mean, _, inverse = self._matrices(x)
        return (x.reshape(len(x), -1) @ inverse + mean).reshape(x.shape)


class Preprocess:
    """uint8 or [0, 1] images → float32 model space (normalised, then optionally ZCA-whitened).

    Save a fit with `tensors()` (for safetensors) and `meta()` (plain JSON values); rebuild it with
    `Preprocess.from_state(tensors, meta)`.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], zca: bool = False, zca_eps: float = 0.1
    ) -> None:
        self.normalize = Normalize(mean, std)
        self.zca = ZCA(zca_eps) if zca else None

    def fit(self, train: torch.Tensor) -> Preprocess:
        """Fit the ZCA (if any) on the normalised train images; a no-op without ZCA."""
        if self.zca is not None:
            self.zca.fit(self.normalize(to_unit(c)) for c in train.split(_CHUNK))
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(to_unit(x))
        return self.zca(x) if self.zca is not None else x

    def _backward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        return self.normalize.inverse(self.zca.inverse(y) if self.zca is not None else y)

    @staticmethod
    def _blocked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Whole splits block by block into one preallocated output; autograd inputs in one go."""
        if x.requires_grad or len(x) <= _CHUNK:
            return fn(x)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for i in range(0, len(x), _CHUNK):
            out[i : i + _CHUNK] = fn(x[i : i + _CHUNK])
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._blocked(self._forward, x)

    def inverse(self, y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Model space back to [0, 1] images (clamped for display unless `clamp` is False)."""
        x = self._blocked(self._backward, y)
        return x.clamp(0, 1) if clamp else x

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.zca is None:
            return {}
        if not self.zca.fitted:
            raise RuntimeError("Preprocess with ZCA saved before fit()")
        return {"zca_mean": self.zca.mean, "zca_eigvecs": self.zca.eigvecs, "zca_eigvals": self.zca.eigvals}

    def meta(self) -> dict[str, Any]:
        return {
            "mean": list(self.normalize.mean),
            "std": list(self.normalize.std),
            "zca": self.zca is not None,
            "zca_eps": self.zca.eps if self.zca is not None else None,
        }

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Preprocess:
        try:
            prep = cls(meta["mean"], meta["std"], zca=bool(meta["zca"]), zca_eps=meta.get("zca_eps") or 0.1)
            if prep.zca is not None:
                prep.zca.load(tensors["zca_mean"], tensors["zca_eigvecs"], tensors["zca_eigvals"])
        except KeyError as e:
            raise AtomddError(
                f"saved preprocessing lacks {e}; the file was not written by this atomdd"
            ) from None
        return prep
