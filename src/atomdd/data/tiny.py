"""Tiny ImageNet: a JPEG tree, decoded once and then cached beside it (`cache`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomdd.data import Dataset
from atomdd.data.cache import cached_splits, files_key
from atomdd.data.files import _corrupt, _dataset, _decode_all, require_files
from atomdd.errors import AtomddError

TINY_CACHE = "atomdd-cache.safetensors"


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
    labels = np.concatenate([y_train, y_test])
    notes_name = "tinyimagenet's val/val_annotations.txt"
    key = files_key("atomdd-tinyimagenet-cache-v1", train_files + test_files, labels, path, notes_name)
    cached = cached_splits(
        path / TINY_CACHE,
        key,
        (len(train_files), len(test_files)),
        (3, 64, 64),
        lambda: (
            _decode_all(train_files, "RGB", None, (64, 64)),
            _decode_all(test_files, "RGB", None, (64, 64)),
        ),
    )
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
