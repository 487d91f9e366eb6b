"""Decoded images cached beside the image files they came from (or in the folder `--cache-dir` /
$ATOMDD_CACHE names), and read back as memory maps.

Decoding a JPEG tree takes minutes (Tiny ImageNet's 110 000 files) to hours (an ImageNet-sized
folder), so the first read writes one safetensors file of the uint8 train and test splits, keyed by
the exact file list (names, sizes, mtimes, labels) and the decoding settings, and checksummed. Read
back, its arrays are copy-on-write memory maps, not copies: their pages belong to the page cache,
so the torchrun ranks of a machine hold one copy between them, and each rank copies only its own
classes' images into model space. Data mounted read-only (the norm on clusters and in containers)
takes its cache from `--cache-dir`; without one, it is decoded in memory, with a warning that says
so (issue 29: 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from atomdd.errors import AtomddError, WriteError
from atomdd.io import atomic_path

log = logging.getLogger(__name__)

Splits = tuple[np.ndarray, np.ndarray]  # train images, test images: uint8 N×C×H×W
CACHE_ENV = "ATOMDD_CACHE"  # a folder for every decode cache, instead of beside the images


@contextlib.contextmanager
def cache_folder(folder: str | os.PathLike | None) -> Iterator[None]:
    """Within the block (and in the processes it starts), decode caches go to `folder`, as with
    ATOMDD_CACHE=folder; None changes nothing. The CLI's `--cache-dir`."""
    if folder is None:
        yield
        return
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def cache_location(beside: Path) -> Path:
    """Where the cache that would lie at `beside` lives: there, or in $ATOMDD_CACHE under a name
    that keeps the caches of different data folders apart."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return beside
    source = beside.parent.resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return Path(folder).expanduser() / f"{source.name}-{digest}-{beside.name}"


def files_key(tag: str, files: Sequence[Path], labels: np.ndarray, root: Path, listed_in: str) -> str:
    """Names the exact file list (names, sizes, mtimes, labels) under a `tag` that says how they
    are decoded: any change invalidates the cache. `listed_in`: where a missing file was named."""
    h = hashlib.sha256(f"{tag}\n".encode())
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            raise AtomddError(f"{f} is missing (it is listed in {listed_in})") from None
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def cached_splits(
    cache: Path,
    key: str,
    counts: tuple[int, int],
    shape: tuple[int | None, ...],
    decode: Callable[[], Splits],
) -> Splits:
    """The splits from the cache (`cache_location(cache)`) if it holds `key`'s (`counts` images of
    `shape`, where None matches any size), else `decode()`d and cached; mapped from the cache
    whenever it could be written, else held in memory."""
    cache = cache_location(cache)
    if (found := _load(cache, key, counts, shape)) is not None:
        return found
    log.info("decoding %d images once (cached in %s)", sum(counts), cache)
    decoded = decode()
    if not _save(cache, key, *decoded):
        return decoded
    return _load(cache, key, counts, shape) or decoded


def _load(cache: Path, key: str, counts: tuple[int, int], shape: tuple[int | None, ...]) -> Splits | None:
    if not cache.exists():
        return None
    try:
        with safe_open(str(cache), framework="np") as f:  # validates the header
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
        train, test = (_mapped(cache, name) for name in ("train_images", "test_images"))
        if meta.get("crc32") != _crc32(train, test):  # found by fuzzing: flipped pixels loaded silently
            log.warning("ignoring the damaged cache %s (checksum mismatch); decoding again", cache)
            return None
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        log.warning("ignoring unreadable cache %s: %s", cache, e)
        return None
    fits = all(want in (None, got) for want, got in zip(shape, train.shape[1:], strict=True))
    if (len(train), len(test)) != counts or not fits or test.shape[1:] != train.shape[1:]:
        return None
    return train, test


def _mapped(file: Path, name: str) -> np.ndarray:
    """A uint8 tensor of a safetensors file as a copy-on-write memory map (pages read when touched)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(n))[name]
    start, stop = info["data_offsets"]
    shape = tuple(info["shape"])
    if info["dtype"] != "U8" or stop - start != math.prod(shape) or not 0 <= start <= stop:
        raise ValueError(f"{name} is not a uint8 tensor of shape {shape}")
    if math.prod(shape) == 0:  # an empty region cannot be mapped
        return np.zeros(shape, np.uint8)
    return np.memmap(file, np.uint8, mode="c", offset=8 + n + start, shape=shape)


def _crc32(*arrays: np.ndarray) -> str:
    """A checksum of the cached pixels (0.5 s for Tiny ImageNet's 1.2 GB; decoding them takes minutes)."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return f"{crc:08x}"


def _save(cache: Path, key: str, train: np.ndarray, test: np.ndarray) -> bool:
    """Write the cache; False (and a warning) where it cannot be written: a read-only or full disk
    only costs the next read its speed."""
    try:
        with atomic_path(cache) as tmp:
            meta = {"key": key, "crc32": _crc32(train, test)}
            save_file({"train_images": train, "test_images": test}, str(tmp), metadata=meta)
    except (WriteError, SafetensorError) as e:  # atomic_path turns every OS error into a WriteError
        log.warning(
            "%s; the images were decoded in memory and will be decoded again next time: give "
            "--cache-dir DIR (or set %s) for a writable folder to keep them",
            e,
            CACHE_ENV,
        )
        return False
    return True
