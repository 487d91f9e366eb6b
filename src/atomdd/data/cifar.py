"""CIFAR-10/100 python pickles, read by an unpickler that refuses anything but plain data."""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomdd.data import Dataset
from atomdd.data.files import _corrupt, _dataset, require_files
from atomdd.errors import AtomddError

try:  # numpy 2 moved the array constructor that pickles name; files from either era name either module
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


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


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def read_cifar10(path: Path) -> Dataset:
    return _read_cifar(
        "cifar10",
        path,
        CIFAR10_FILES,
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
