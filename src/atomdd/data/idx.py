"""scikit-learn digits and the IDX files of MNIST and Fashion-MNIST."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomdd.data import Dataset
from atomdd.data.files import _corrupt, _dataset, require_files
from atomdd.errors import AtomddError


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same fraction of every class held out, fixed by `seed`; indices in ascending order."""
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [
            rng.permutation(idx)[: round(len(idx) * test_fraction)]
            for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))
        ]
    )
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def read_digits(path: Path) -> Dataset:
    """The 1 797 8×8 digits bundled with scikit-learn: a dataset every install has, for demos and tests.

    Read straight from scikit-learn's CSV: importing `sklearn.datasets` alone costs ~2.5 s.
    """
    sklearn = importlib.util.find_spec("sklearn")
    source = (
        Path(sklearn.origin).parent / "datasets" / "data" / "digits.csv.gz" if sklearn else Path("sklearn")
    )
    if not source.exists():
        raise AtomddError(f"digits: scikit-learn's digits file {source} is missing; (re)install scikit-learn")
    table = np.loadtxt(source, delimiter=",")
    images = np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    train, test = _stratified_split(labels, 0.2, seed=0)
    classes = [str(d) for d in range(10)]
    return _dataset("digits", source, (images[train], labels[train]), (images[test], labels[test]), classes)


# A header promising more than this is forged (MNIST's largest file is 47 MB), and deflate cannot
# expand a stream more than 1032-fold, so neither can make the reader allocate more than the file allows.
MAX_IDX_BYTES = 1 << 32
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20


def read_idx(file: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions, from a plain or gzipped file.

    Streamed: the header is read first and checked, then exactly the bytes it promises are read into
    one array (never more: a gzip bomb is refused after its first promised byte too many), so memory
    is bounded by what a genuine file of that header needs.
    """
    gz = file.suffix == ".gz"
    try:
        raw = open(file, "rb")  # noqa: SIM115  (closed below, with the gzip stream)
    except OSError as e:
        raise AtomddError(f"cannot read {file}: {e.strerror or e}") from None
    try:
        with raw, gzip.GzipFile(fileobj=raw, mode="rb") if gz else contextlib.nullcontext(raw) as stream:
            return _read_idx_stream(file, stream, ndim, os.fstat(raw.fileno()).st_size, gz)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _corrupt(file, f"bad gzip data ({e})" if gz else f"read error ({e})") from None


def _read_idx_stream(
    file: Path, stream: io.BufferedIOBase, ndim: int, file_size: int, gz: bool
) -> np.ndarray:
    header = 4 + 4 * ndim
    head = stream.read(header)
    if len(head) < header:
        raise _corrupt(file, f"{len(head)} bytes, shorter than its {header}-byte IDX header")
    if head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise _corrupt(
            file, f"magic number 0x{head[:4].hex()} is not 0x000008{ndim:02x} (unsigned bytes, {ndim} dims)"
        )
    dims = struct.unpack(f">{ndim}I", head[4:header])
    size = math.prod(dims)

    def mismatch(got: str, short: bool) -> AtomddError:
        return _corrupt(
            file,
            f"{got} data bytes where the header {dims} promises {size}"
            + (" (file ends early)" if short else " (trailing bytes)"),
        )

    if size > MAX_IDX_BYTES:
        raise _corrupt(file, f"the header {dims} promises {size} bytes, more than any IDX file atomdd reads")
    if not gz and file_size - header != size:
        raise mismatch(str(file_size - header), file_size - header < size)
    if gz and size > file_size * _DEFLATE_MAX_RATIO:
        raise mismatch(f"at most {file_size * _DEFLATE_MAX_RATIO} (its {file_size} compressed bytes)", True)
    out = np.empty(size, np.uint8)
    view, pos = memoryview(out), 0
    while pos < size:
        n = stream.readinto(view[pos : pos + _CHUNK])
        if not n:
            raise mismatch(str(pos), True)
        pos += n
    if stream.read(1):
        raise mismatch(f"more than {size}", False)
    return out.reshape(dims)


def _idx_file(path: Path, name: str) -> Path:
    """The uncompressed file if present (faster), else its .gz."""
    plain = path / name
    return plain if plain.exists() else path / f"{name}.gz"


def _read_idx_set(
    name: str, path: Path, classes: Sequence[str], mean: tuple[float, ...], std: tuple[float, ...]
) -> Dataset:
    require_files(name, path)
    splits = []
    for split in ("train", "t10k"):
        image_file = _idx_file(path, f"{split}-images-idx3-ubyte")
        label_file = _idx_file(path, f"{split}-labels-idx1-ubyte")
        images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
        if len(labels) != len(images):
            raise _corrupt(
                label_file, f"{len(labels)} labels for the {len(images)} images of {image_file.name}"
            )
        if labels.size and labels.max() >= len(classes):
            raise _corrupt(label_file, f"label {labels.max()} is not a class index below {len(classes)}")
        splits.append((images[:, None], labels))
    return _dataset(name, path, splits[0], splits[1], classes, mean, std)


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_downloads(base: str, md5s: Sequence[str]) -> tuple[dict, ...]:
    return tuple(
        {"url": f"{base}{f}.gz", "md5": m, "filename": f"{f}.gz"}
        for f, m in zip(IDX_FILES, md5s, strict=True)
    )


def read_mnist(path: Path) -> Dataset:
    return _read_idx_set("mnist", path, [str(d) for d in range(10)], (0.1307,), (0.3081,))


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_fashion_mnist(path: Path) -> Dataset:
    return _read_idx_set("fashion-mnist", path, FASHION_CLASSES, (0.2861,), (0.3530,))
