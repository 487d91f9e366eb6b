"""Tiny ImageNet: a JPEG tree, decoded once and then cached beside it."""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from atomdd.data import Dataset
from atomdd.data.files import _corrupt, _dataset, _decode_all, require_files
from atomdd.errors import AtomddError
from atomdd.io import atomic_path

log = logging.getLogger(__name__)

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
