"""Readers of the built-in datasets, each reading the format its publishers ship.

A new dataset is one reader function (folder -> `Dataset`) and one `register` call. Every reader
checks its expected files first, so a missing file is reported by name together with the folder
searched, and every parse is strict: a short, corrupt or foreign file becomes an `AtomddError` that
names it, never a numpy traceback or a silently wrong array.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import logging
import math
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from atomdd.data import DATASETS, Dataset, DatasetSpec, download_flag_offered, register
from atomdd.errors import AtomddError
from atomdd.io import atomic_path

try:  # numpy 2 moved the array constructor that pickles name; files from either era name either module
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# shared helpers


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


# ---------------------------------------------------------------------------------------------------
# scikit-learn digits


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


# ---------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


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


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_downloads(base: str, md5s: Sequence[str]) -> tuple[dict, ...]:
    return tuple(
        {"url": f"{base}{f}.gz", "md5": m, "filename": f"{f}.gz"}
        for f, m in zip(_IDX_FILES, md5s, strict=True)
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


# ---------------------------------------------------------------------------------------------------
# CIFAR python pickles, read without letting the file run code


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


def _array(subtype: type, shape: tuple, dtype: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise _Refused(f"{subtype!r} (only plain numpy arrays are allowed)")
    return _np_reconstruct(subtype, shape, dtype)


def _dtype(*args: object) -> np.dtype:
    dt = np.dtype(*args[:3])
    if dt.hasobject:  # object arrays would unpickle arbitrary objects
        raise _Refused("numpy object dtype (only numeric arrays are allowed)")
    return dt


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles written by Python 3 store bytes; any other codec is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _array,
    ("numpy._core.multiarray", "_reconstruct"): _array,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class _DataUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings, bytes and numeric numpy arrays; imports nothing else."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def read_data_pickle(file: Path) -> dict[str, object]:
    """A dict from an official CIFAR-style pickle, keys as str whether stored as py2 str or bytes."""
    data = file.read_bytes()
    try:
        obj = _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise AtomddError(
            f"{file}: refused: pickle would import {e}; a dataset file may only hold numbers, strings, "
            "lists and numeric arrays, so this is not an official CIFAR batch. Delete it and download "
            "the official archive again."
        ) from None
    except Exception as e:  # damaged pickle bytes raise nearly any exception type
        raise _corrupt(file, f"not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str | bytes) for k in obj):
        raise _corrupt(file, "holds no dict of named fields")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(batch: dict[str, object], key: str, file: Path) -> object:
    if key not in batch:
        raise _corrupt(file, f"has no {key!r} field (fields: {', '.join(sorted(batch))})")
    return batch[key]


def _cifar_batch(file: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_data_pickle(file)
    data, labels = _field(batch, "data", file), np.asarray(_field(batch, label_key, file))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _corrupt(file, "'data' is not an N×3072 uint8 array")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise _corrupt(file, f"{label_key!r} is not a list of {len(data)} integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(file, f"{label_key!r} holds labels outside 0..{num_classes - 1}")
    # each row is the R plane, then G, then B, each 32×32 row-major: exactly C×H×W
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar(
    name: str,
    path: Path,
    train_files: Sequence[str],
    test_file: str,
    meta_file: str,
    label_key: str,
    names_key: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Dataset:
    require_files(name, path)
    names = _field(read_data_pickle(path / meta_file), names_key, path / meta_file)
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise _corrupt(path / meta_file, f"{names_key!r} is not a list of names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    batches = [_cifar_batch(path / f, label_key, len(classes)) for f in train_files]
    train = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    test = _cifar_batch(path / test_file, label_key, len(classes))
    return _dataset(name, path, train, test, classes, mean, std)


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def read_cifar10(path: Path) -> Dataset:
    return _read_cifar(
        "cifar10",
        path,
        _CIFAR10_FILES,
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
    )


def read_cifar100(path: Path) -> Dataset:
    return _read_cifar(
        "cifar100",
        path,
        ["train"],
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        (0.5071, 0.4866, 0.4409),
        (0.2673, 0.2564, 0.2762),
    )


# ---------------------------------------------------------------------------------------------------
# Tiny ImageNet (JPEG tree; decoded once, then cached)

TINY_CACHE = "atomdd-cache.safetensors"


def _files_key(files: Sequence[Path], labels: np.ndarray, root: Path) -> str:
    """Names the exact file list (names, sizes, mtimes, labels): any change invalidates the cache."""
    h = hashlib.sha256(b"atomdd-tinyimagenet-cache-v1\n")
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            raise AtomddError(
                f"tinyimagenet: {f} is missing (it is listed in val/val_annotations.txt)"
            ) from None
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def _load_cache(cache: Path, key: str, counts: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    if not cache.exists():
        return None
    try:
        with safe_open(str(cache), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            train, test = f.get_tensor("train_images"), f.get_tensor("test_images")
        if meta.get("crc32") != _crc32(train, test):  # found by fuzzing: flipped pixels loaded silently
            log.warning("ignoring the damaged cache %s (checksum mismatch); decoding again", cache)
            return None
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        log.warning("ignoring unreadable cache %s: %s", cache, e)
        return None
    if (len(train), len(test)) != counts or train.shape[1:] != (3, 64, 64) or test.shape[1:] != (3, 64, 64):
        return None
    return train, test


def _crc32(*arrays: np.ndarray) -> str:
    """A checksum of the cached pixels (0.5 s for Tiny ImageNet's 1.2 GB; decoding them takes minutes)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return f"{crc:08x}"


def _save_cache(cache: Path, key: str, train: np.ndarray, test: np.ndarray) -> None:
    try:
        with atomic_path(cache) as tmp:
            meta = {"key": key, "crc32": _crc32(train, test)}
            save_file({"train_images": train, "test_images": test}, str(tmp), metadata=meta)
    except OSError as e:  # a read-only or full disk only costs the next read its speed
        log.warning("could not write the decode cache %s: %s", cache, e)


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # found by fuzzing
        raise _corrupt(file, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _wordnet_names(words: Path, wnids: Sequence[str]) -> list[str]:
    """Human names from words.txt (first synonym), falling back to the wnid."""
    names: dict[str, str] = {}
    if words.exists():
        for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            names[wnid.strip()] = text.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def read_tinyimagenet(path: Path) -> Dataset:
    """Tiny ImageNet 200: train/<wnid>/images/*.JPEG; its labelled val split serves as the test split."""
    require_files("tinyimagenet", path)
    wnids = _read_text(path / "wnids.txt").split()
    index = {w: i for i, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for i, wnid in enumerate(wnids):
        folder = path / "train" / wnid / "images"
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in (".jpeg", ".jpg"))
        if not files:
            raise AtomddError(f"tinyimagenet: no JPEG images in {folder} (class {wnid} of wnids.txt)")
        train_files += files
        train_labels += [i] * len(files)
    notes = path / "val" / "val_annotations.txt"
    test_files: list[Path] = []
    test_labels: list[int] = []
    for n, line in enumerate(_read_text(notes).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise _corrupt(notes, f"line {n} ({line[:60]!r}) names no class of wnids.txt")
        test_files.append(path / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])

    y_train, y_test = np.array(train_labels, np.int64), np.array(test_labels, np.int64)
    key = _files_key(train_files + test_files, np.concatenate([y_train, y_test]), path)
    cached = _load_cache(path / TINY_CACHE, key, (len(train_files), len(test_files)))
    if cached is None:
        log.info(
            "decoding %d Tiny ImageNet JPEGs once (cached in %s)",
            len(train_files) + len(test_files),
            TINY_CACHE,
        )
        cached = (
            _decode_all(train_files, "RGB", None, (64, 64)),
            _decode_all(test_files, "RGB", None, (64, 64)),
        )
        _save_cache(path / TINY_CACHE, key, *cached)
    classes = _wordnet_names(path / "words.txt", wnids)
    return _dataset(
        "tinyimagenet",
        path,
        (cached[0], y_train),
        (cached[1], y_test),
        classes,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )


# ---------------------------------------------------------------------------------------------------
# a user's own class-per-folder tree

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_TEST_FRACTION = 0.2
_TREE_HINT = "expected one sub-folder of images per class (optionally inside train/ and test/ or val/)"


def _class_folders(root: Path) -> list[str]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AtomddError(f"imagefolder: {root} has no class sub-folders; {_TREE_HINT}")
    return classes


def _class_images(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise AtomddError(f"imagefolder: class folder {folder} holds no PNG, JPEG or BMP images")
    return files


def _split_class(name: str, files: list[Path]) -> tuple[list[Path], list[Path]]:
    """20 % test, seeded by the class name: a class's split stays put when others are added."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    n_test = max(1, round(len(files) * _TEST_FRACTION)) if len(files) > 1 else 0
    test = set(rng.permutation(len(files))[:n_test].tolist())
    return [f for i, f in enumerate(files) if i not in test], [f for i, f in enumerate(files) if i in test]


def _image_mode(file: Path) -> str:
    try:
        with Image.open(file) as im:  # reads the header only
            return im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise AtomddError(f"cannot read image {file}: {e}; remove or replace the file") from None


def load_imagefolder(path: Path | str, image_size: int = 32, grayscale: bool | None = None) -> Dataset:
    """Read a class-per-folder image tree, resized (centre crop, bicubic) to image_size².

    Splits come from train/ and test/ (or val/) when both exist, else 20 % of each class is held out.
    `grayscale` None: one channel only when every image is grayscale; True/False force 1/3 channels.
    """
    path = Path(path)
    if not path.is_dir():
        raise AtomddError(
            f"imagefolder: {path} is not a folder; pass --data-root DIR where DIR holds "
            f"one sub-folder of images per class"
        )
    test_root = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if (path / "train").is_dir() and test_root is not None:
        classes = _class_folders(path / "train")
        train = [(f, i) for i, c in enumerate(classes) for f in _class_images(path / "train" / c)]
        if unknown := sorted(set(_class_folders(test_root)) - set(classes)):
            raise AtomddError(
                f"imagefolder: {test_root} has classes {', '.join(unknown)} that "
                f"{path / 'train'} lacks; every test class needs training images"
            )
        test = [
            (f, classes.index(c)) for c in _class_folders(test_root) for f in _class_images(test_root / c)
        ]
    else:
        classes = _class_folders(path)
        train, test = [], []
        for i, c in enumerate(classes):
            tr, te = _split_class(c, _class_images(path / c))
            train += [(f, i) for f in tr]
            test += [(f, i) for f in te]

    if grayscale is None:
        grayscale = all(_image_mode(f) in _GRAY_MODES for f, _ in train + test)
    mode, shape = ("L" if grayscale else "RGB"), (image_size, image_size)

    def split(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        files, labels = zip(*items, strict=True) if items else ((), ())
        return _decode_all(files, mode, image_size, shape), np.array(labels, np.int64)

    return _dataset("imagefolder", path, split(train), split(test), classes)


# ---------------------------------------------------------------------------------------------------
# the registry entries


def _archive(url: str, md5: str) -> tuple[dict, ...]:
    """One archive whose top folder is the dataset's folder."""
    return ({"url": url, "md5": md5, "filename": url.rsplit("/", 1)[1], "extract": True},)


register(
    DatasetSpec(
        name="digits",
        description="scikit-learn's 8×8 handwritten digits (1 797 images), bundled",
        folder="",
        reader=read_digits,
        num_classes=10,
        channels=1,
        image_size=8,
        embedded=True,
    )
)
register(
    DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits, 28×28 gray (IDX files)",
        folder="MNIST/raw",
        reader=read_mnist,
        num_classes=10,
        channels=1,
        image_size=28,
        files=_IDX_FILES,
        downloads=_idx_downloads(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
    )
)
register(
    DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST clothing, 28×28 gray (IDX files)",
        folder="FashionMNIST/raw",
        reader=read_fashion_mnist,
        num_classes=10,
        channels=1,
        image_size=28,
        files=_IDX_FILES,
        downloads=_idx_downloads(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    )
)
register(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10, 32×32 colour, 10 classes (python pickles)",
        folder="cifar-10-batches-py",
        reader=read_cifar10,
        num_classes=10,
        channels=3,
        image_size=32,
        files=(*_CIFAR10_FILES, "test_batch", "batches.meta"),
        downloads=_archive(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
        ),
    )
)
register(
    DatasetSpec(
        name="cifar100",
        description="CIFAR-100, 32×32 colour, 100 fine classes (python pickles)",
        folder="cifar-100-python",
        reader=read_cifar100,
        num_classes=100,
        channels=3,
        image_size=32,
        files=("train", "test", "meta"),
        downloads=_archive(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"
        ),
    )
)
register(
    DatasetSpec(
        name="tinyimagenet",
        description="Tiny ImageNet, 64×64 colour, 200 classes (JPEG tree; val = test)",
        folder="tiny-imagenet-200",
        reader=read_tinyimagenet,
        num_classes=200,
        channels=3,
        image_size=64,
        files=("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
        downloads=_archive(
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"
        ),
    )
)
register(
    DatasetSpec(
        name="imagefolder",
        description="your own images: the data root holds one folder per class, resized to 32×32",
        folder="",
        reader=load_imagefolder,
        image_size=32,
    )
)
