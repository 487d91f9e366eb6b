"""Datasets: one registry, every reader returning the same `Dataset` (uint8 images, int64 labels).

`--data-root DIR` (or the ATOMDD_DATA variable) names the folder that holds each dataset's usual
folder, laid out as torchvision lays them out (`MNIST/raw/`, `cifar-10-batches-py/`, ...), so data a
user already has is found where it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from atomdd.errors import AtomddError
from atomdd.io import user_cache
from atomdd.registry import Registry

if TYPE_CHECKING:
    from atomdd.data.transforms import Preprocess


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held in memory as uint8 N×C×H×W tensors."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise AtomddError(
                    f"{self.name}: {split} images must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise AtomddError(f"{self.name}: {split} labels must be int64 of length {x.shape[0]}")
            if x.shape[0] == 0:
                where = f" (read from {self.source})" if self.source else ""
                raise AtomddError(
                    f"{self.name}: the {split} split is empty{where}; a dataset needs images in both its "
                    "train and test splits. Check that its files are complete (or give the missing split)"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise AtomddError(f"{self.name}: train and test images differ in shape")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise AtomddError(f"{self.name}: mean/std need one value per channel ({self.channels})")

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def content_hash(self) -> str:
        """sha256 over images and labels of both splits: names the exact data a result came from."""
        h = hashlib.sha256()
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy())  # the buffer itself: no copy of a mapped dataset
        return h.hexdigest()

    def class_indices(self) -> list[torch.Tensor]:
        """Indices of the train images of each class, in class order."""
        return [torch.nonzero(self.train_labels == c).flatten() for c in range(self.num_classes)]

    def preprocess(self, zca: bool = False) -> Preprocess:
        """The model-space preprocessing of this dataset (normalisation, ZCA if asked), fitted on
        its train images."""
        from atomdd.data.transforms import Preprocess

        return Preprocess(self.mean, self.std, zca=zca).fit(self.train_images)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "train": int(self.train_images.shape[0]),
            "test": int(self.test_images.shape[0]),
            "classes": self.num_classes,
            "channels": self.channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "hash": self.content_hash,
        }


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one registered dataset."""

    name: str
    description: str
    folder: str  # the usual folder under the data root ("" = the data root itself)
    reader: Callable[[Path], Dataset]  # reads the dataset from its folder
    num_classes: int | None = None
    channels: int | None = None
    image_size: int | None = None
    # {"url", "md5", "filename"} for verified downloads; "extract": True marks an archive whose top
    # folder is `folder`, so it is saved and unpacked in the data root
    downloads: tuple[dict, ...] = field(default=())
    embedded: bool = False  # ships inside an installed package; needs no data root
    files: tuple[str, ...] = ()  # what must exist in the folder (a name is also met by its .gz)

    def path(self, data_root: str | os.PathLike | None) -> Path:
        root = resolve_data_root(data_root)
        return root / self.folder if self.folder else root

    def missing(self, path: Path) -> list[str]:
        """The expected files absent from `path`: a cheap check, reads nothing."""
        return [f for f in self.files if not ((path / f).exists() or (path / f"{f}.gz").exists())]


DATASETS: Registry[DatasetSpec] = Registry("dataset")
register = DATASETS.register
get_spec = DATASETS.get_spec

# Whether the caller can act on "add --download": the CLI sets it for commands that have the flag.
_OFFER_DOWNLOAD_FLAG = contextvars.ContextVar("atomdd_offer_download_flag", default=False)


@contextlib.contextmanager
def offer_download(flag: bool = True) -> Iterator[None]:
    """Within the block, a missing dataset's message suggests `--download` (if `flag`)."""
    token = _OFFER_DOWNLOAD_FLAG.set(flag)
    try:
        yield
    finally:
        _OFFER_DOWNLOAD_FLAG.reset(token)


def download_flag_offered() -> bool:
    return _OFFER_DOWNLOAD_FLAG.get()


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The explicit root, else $ATOMDD_DATA, else ~/.cache/atomdd/data."""
    if data_root:
        return Path(data_root).expanduser()
    if env := os.environ.get("ATOMDD_DATA"):
        return Path(env).expanduser()
    return user_cache("data")


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Read a registered dataset; with `download`, fetch (md5-checked) what is missing first."""
    spec = get_spec(name)
    path = spec.path(data_root)
    if download and spec.downloads:
        from atomdd.data.download import fetch_dataset

        fetch_dataset(spec, path)
    return spec.reader(path)


def as_dataset(
    dataset: str | Dataset, data_root: str | os.PathLike | None = None, download: bool = False
) -> Dataset:
    """`dataset` itself, or the registered dataset of that name, loaded."""
    return load_dataset(dataset, data_root, download) if isinstance(dataset, str) else dataset


from atomdd.data import readers as _readers  # noqa: E402,F401  (registers the built-in datasets)
