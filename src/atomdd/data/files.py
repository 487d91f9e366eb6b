"""What every reader shares: the dataset record from arrays, missing-file and corrupt-file errors
that name the file, and bounded, parallel image decoding."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from atomdd.data import DATASETS, Dataset, DatasetSpec, download_flag_offered
from atomdd.errors import AtomddError


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 N×C×H×W images.

    Exact, from a 256-bin histogram per channel, so a 50 000-image set needs no float copy.
    """
    values = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        m = counts @ values / counts.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(counts @ (values - m) ** 2 / counts.sum())))
    return tuple(mean), tuple(std)


def _dataset(
    name: str,
    path: Path | str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Dataset:
    """Wrap numpy splits as a `Dataset`; mean/std default to the train split's own."""
    if mean is None or std is None:
        mean, std = channel_stats(train[0])

    def tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.require(a, dtype, requirements=["C", "W"]))

    return Dataset(
        name=name,
        train_images=tensor(train[0], np.uint8),
        train_labels=tensor(train[1], np.int64),
        test_images=tensor(test[0], np.uint8),
        test_labels=tensor(test[1], np.int64),
        classes=tuple(classes),
        mean=tuple(mean),
        std=tuple(std),
        source=str(path),
    )


def missing_files_error(spec: DatasetSpec, path: Path, missing: Sequence[str]) -> AtomddError:
    """The error for absent files: what is missing, where we looked, and the ways to fix it."""
    holder = f"the folder that holds {spec.folder}/" if spec.folder else "the dataset's folder"
    hint = f"Put the files there, or point --data-root DIR (or the ATOMDD_DATA variable) at {holder}"
    if spec.downloads and download_flag_offered():
        hint += ", or add --download to fetch them (md5-checked)"
    elif spec.downloads:
        hint += "; `atomdd distill --download` or load_dataset(..., download=True) fetch them (md5-checked)"
    return AtomddError(f"{spec.name}: missing {', '.join(missing)} in {path}. {hint}.")


def require_files(name: str, path: Path) -> None:
    spec = DATASETS[name]
    if missing := spec.missing(path):
        raise missing_files_error(spec, path, missing)


def _corrupt(file: Path, why: str) -> AtomddError:
    return AtomddError(
        f"{file} is truncated or corrupt: {why}. Delete it and download it again (or put a good copy there)."
    )


# More pixels than this in one image file is a decompression bomb (Pillow's own threshold for a warning):
# refused from the header, before decoding.
MAX_IMAGE_PIXELS = 89_478_485


def _decode_image(
    file: Path, mode: str, size: int | None, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """One image as a C×H×W uint8 array: converted to `mode`, centre-cropped and resized to `size`.

    The header is checked first: an image of another size than `shape` (when `size` is None), or one
    of more than MAX_IMAGE_PIXELS, is refused without being decoded.
    """
    try:
        with Image.open(file) as im:
            w, h = im.size
            if size is None and shape is not None and (h, w) != shape:
                raise AtomddError(f"image {file} is {w}×{h}, expected {shape[1]}×{shape[0]}")
            if w * h > MAX_IMAGE_PIXELS:
                raise AtomddError(
                    f"image {file} claims {w}×{h} pixels, more than {MAX_IMAGE_PIXELS} (a decompression "
                    "bomb?); remove or replace the file"
                )
            im = im.convert(mode)
            if size is not None:
                im = ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise AtomddError(f"cannot read image {file}: {e}; remove or replace the file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(files: Sequence[Path], mode: str, size: int | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode many images into one N×C×H×W array, on every core (Pillow releases the GIL)."""
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, *shape), dtype=np.uint8)
    workers = max(1, min(os.cpu_count() or 1, len(files)))

    def fill(start: int) -> None:
        for i in range(start, len(files), workers):
            arr = _decode_image(files[i], mode, size, shape)
            if arr.shape[1:] != shape:
                raise AtomddError(
                    f"image {files[i]} is {arr.shape[2]}×{arr.shape[1]}, expected {shape[1]}×{shape[0]}"
                )
            out[i] = arr

    with ThreadPoolExecutor(workers) as pool:
        for job in [pool.submit(fill, s) for s in range(workers)]:
            job.result()
    return out
