"""A small labelled set of images in a model's input space, and its on-disk format.

Distillation, coresets and peers' `.pt` sets all become a `SyntheticSet`, so evaluation has one
input. On disk: `synthetic.safetensors` holds the images, the labels and the tensors of the
preprocessing (e.g. the ZCA matrices, needed to show the images and to preprocess the test set the
same way); its metadata holds the dataset name, hash, class names and the preprocessing settings.
Nothing is unpickled when loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from atomdd.errors import AtomddError
from atomdd.io import atomic_path

FILENAME = "synthetic.safetensors"
_PREP = "preprocess."


@dataclass
class SyntheticSet:
    images: torch.Tensor  # N×C×H×W float32, model input space (normalised, ZCA-whitened if used)
    labels: torch.Tensor  # N int64
    dataset: str  # registry name of the dataset it stands for
    classes: tuple[str, ...] = ()
    preprocess_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    preprocess_meta: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # method, ipc, dataset hash, ...

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise AtomddError(
                f"a synthetic set needs N×C×H×W images and N labels, got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if not torch.is_floating_point(self.images) or self.labels.dtype != torch.int64:
            raise AtomddError("synthetic images must be floating point and labels int64")

    @property
    def ipc(self) -> int:
        counts = torch.bincount(self.labels)
        return int(counts.max()) if counts.numel() else 0

    def preprocess(self):
        """The fitted preprocessing these images live in (to invert them or to prepare test images)."""
        from atomdd.data.transforms import Preprocess

        return Preprocess.from_state(self.preprocess_tensors, self.preprocess_meta)

    def save(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / FILENAME
        tensors = {"images": self.images.detach().float().cpu().contiguous(), "labels": self.labels.cpu()}
        tensors |= {_PREP + k: v.detach().cpu().contiguous() for k, v in self.preprocess_tensors.items()}
        metadata = {
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "preprocess": json.dumps(self.preprocess_meta),
            "meta": json.dumps(self.meta, default=str),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path


def load_synthetic(path: str | Path) -> SyntheticSet:
    """Read a set written by `SyntheticSet.save` (give its folder or the file)."""
    path = Path(path)
    file = path / FILENAME if path.is_dir() else path
    if not file.exists():
        where = f"folder {path}" if path.is_dir() else str(path)
        raise AtomddError(f"no synthetic set found: {file} does not exist (looked in {where})")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(file))
        prep_meta = json.loads(metadata.get("preprocess", "{}"))
        classes = tuple(json.loads(metadata.get("classes", "[]")))
        meta = json.loads(metadata.get("meta", "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise AtomddError(f"{file} is corrupt or not a synthetic set written by atomdd: {e}") from None
    if "images" not in tensors or "labels" not in tensors or "dataset" not in metadata:
        raise AtomddError(f"{file} lacks images, labels or the dataset name; it was not written by atomdd")
    return SyntheticSet(
        images=tensors["images"],
        labels=tensors["labels"],
        dataset=metadata["dataset"],
        classes=classes,
        preprocess_tensors={k[len(_PREP) :]: v for k, v in tensors.items() if k.startswith(_PREP)},
        preprocess_meta=prep_meta,
        meta=meta,
    )
