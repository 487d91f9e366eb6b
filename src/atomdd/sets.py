"""A small labelled set of images in a model's input space, its on-disk format, and peers' sets.

Distillation, coresets and peers' `.pt` sets all become a `SyntheticSet`, so evaluation has one
input. A set made with factor images (`factor` f > 1, IDC's idea) stores each image as f×f tiles;
`decoded()` gives the images a model trains on, and every consumer (evaluation, pictures, NAS
proxies, exports) reads the set through it. On disk: `synthetic.safetensors` holds the images, the
labels and the tensors of the preprocessing (e.g. the ZCA matrices, needed to show the images and to
preprocess the test set the same way); its metadata holds the dataset name, hash, class names, the
preprocessing settings and the factor (absent: 1).
Nothing is unpickled when loading. Peers' `.pt` files (DC/DSA/DM/DataDAM's code) are read with
`weights_only=True` and become a `SyntheticSet` too (`load_peer_set`, `load_any`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from atomdd.data import Dataset, as_dataset
from atomdd.errors import AtomddError
from atomdd.folders.layout import SET_FILE
from atomdd.io import save_safetensors
from atomdd.parallel import is_main_process

if TYPE_CHECKING:
    from atomdd.data.transforms import Preprocess

_PREP = "preprocess."


def factor_problem(factor: object, size: tuple[int, ...]) -> str | None:
    """Why `factor` cannot split H×W images `size` into factor×factor tiles, or None."""
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        return f"factor={factor!r}: a whole number ≥ 1 (tiles per side of a stored image)"
    if any(s % factor for s in size):
        return f"factor={factor} does not divide the {'×'.join(map(str, size))} images into equal tiles"
    return None


def decode(images: torch.Tensor, labels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each N×C×H×W stored image as its factor×factor tiles (row by row), each upsampled
    (bilinear) to H×W, with its label: N·f² images, each image's tiles together, so a class-major
    set stays class-major. Differentiable; factor 1 returns the images themselves."""
    if factor == 1:
        return images, labels
    n, c, h, w = images.shape
    tiles = images.reshape(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, h // factor, w // factor)
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return up, labels.repeat_interleave(factor * factor)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """N·f² images as N stored images: each consecutive f² downscaled ×1/f (the mean of each
    f×f block) and tiled row by row, the inverse layout of `decode` (the initial factor images)."""
    if factor == 1:
        return images
    m, c, h, w = images.shape
    small = F.avg_pool2d(images, factor)  # m × c × h/f × w/f
    n = m // (factor * factor)
    grid = small.reshape(n, factor, factor, c, h // factor, w // factor).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, h, w)


@dataclass
class SyntheticSet:
    images: torch.Tensor  # N×C×H×W float32, model input space (normalised, ZCA-whitened if used)
    labels: torch.Tensor  # N int64
    dataset: str  # registry name of the dataset it stands for
    classes: tuple[str, ...] = ()
    preprocess_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    preprocess_meta: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # method, ipc, dataset hash, ...
    # N×K class probabilities (e.g. a teacher's), kept beside the hard labels; None: hard labels only
    soft_labels: torch.Tensor | None = None
    factor: int = 1  # each stored image holds factor×factor tiles (`decode`)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise AtomddError(
                f"a synthetic set needs N×C×H×W images and N labels, got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if not torch.is_floating_point(self.images) or self.labels.dtype != torch.int64:
            raise AtomddError("synthetic images must be floating point and labels int64")
        soft = self.soft_labels
        if soft is not None and (
            soft.ndim != 2
            or len(soft) != len(self.labels)
            or not torch.is_floating_point(soft)
            or not bool(torch.isfinite(soft).all())
        ):
            raise AtomddError(
                f"soft labels must be finite N×K floats, one row per image ({len(self.labels)}), got "
                f"{soft.dtype} {tuple(soft.shape)}"
            )
        if problem := factor_problem(self.factor, tuple(self.images.shape[2:])):
            raise AtomddError(f"a synthetic set's {problem}")

    @classmethod
    def of(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor,
        data: Dataset,
        prep: Preprocess,
        meta: dict,
        factor: int = 1,
    ):
        """A set of `data` whose model-space `images` were made with the fitted `prep`."""
        return cls(
            images=images,
            labels=labels,
            dataset=data.name,
            classes=data.classes,
            preprocess_tensors=prep.tensors(),
            preprocess_meta=prep.meta(),
            meta=meta,
            factor=factor,
        )

    @property
    def ipc(self) -> int:
        """Stored images per class (a factor set trains on ipc·factor² a class)."""
        counts = torch.bincount(self.labels)
        return int(counts.max()) if counts.numel() else 0

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) a model trains on: the stored ones, or with `factor` > 1 their tiles
        upsampled (`decode`)."""
        return decode(self.images, self.labels, self.factor)

    def preprocess(self):
        """The fitted preprocessing these images live in (to invert them or to prepare test images)."""
        from atomdd.data.transforms import Preprocess

        return Preprocess.from_state(self.preprocess_tensors, self.preprocess_meta)

    def save(self, out_dir: str | Path) -> Path:
        """Write `out_dir/synthetic.safetensors` (in the main process only; see `parallel`)."""
        path = Path(out_dir) / SET_FILE
        if not is_main_process():
            return path
        tensors = {"images": self.images.detach().float().cpu().contiguous(), "labels": self.labels.cpu()}
        if self.soft_labels is not None:
            tensors["soft_labels"] = self.soft_labels.detach().float().cpu().contiguous()
        tensors |= {_PREP + k: v.detach().cpu().contiguous() for k, v in self.preprocess_tensors.items()}
        metadata = {
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "preprocess": json.dumps(self.preprocess_meta),
            "meta": json.dumps(self.meta, default=str),
        }
        if self.factor != 1:  # absent: 1 (every file written before factor images)
            metadata["factor"] = str(self.factor)
        save_safetensors(path, tensors, metadata)  # the same set gives the same bytes
        return path


def load_synthetic(path: str | Path) -> SyntheticSet:
    """Read a set written by `SyntheticSet.save` (give its folder or the file)."""
    path = Path(path)
    file = path / SET_FILE if path.is_dir() else path
    if not file.exists():
        where = f"folder {path}" if path.is_dir() else str(path)
        raise AtomddError(f"no synthetic set found: {file} does not exist (looked in {where})")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(file))
        prep_meta = json.loads(metadata.get("preprocess", "{}"))
        classes = json.loads(metadata.get("classes", "[]"))
        meta = json.loads(metadata.get("meta", "{}"))
        factor = int(metadata.get("factor", "1"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise AtomddError(f"{file} is corrupt or not a synthetic set written by atomdd: {e}") from None
    if "images" not in tensors or "labels" not in tensors or "dataset" not in metadata:
        raise AtomddError(f"{file} lacks images, labels or the dataset name; it was not written by atomdd")
    names_ok = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    prep_ok = all(torch.is_floating_point(t) for k, t in tensors.items() if k.startswith(_PREP))
    if not (names_ok and prep_ok and isinstance(prep_meta, dict) and isinstance(meta, dict)):
        raise AtomddError(
            f"{file}: its preprocess, meta or classes metadata (or a preprocessing tensor) is malformed; "
            "not written by atomdd"
        )
    syn = SyntheticSet(
        images=tensors["images"],
        labels=tensors["labels"],
        dataset=metadata["dataset"],
        classes=tuple(classes),
        preprocess_tensors={k[len(_PREP) :]: v for k, v in tensors.items() if k.startswith(_PREP)},
        preprocess_meta=prep_meta,
        meta=meta,
        soft_labels=tensors.get("soft_labels"),
        factor=factor,
    )
    try:  # the preprocessing must rebuild (evaluation needs it): check now, not after training
        syn.preprocess()
    except AtomddError as e:
        raise AtomddError(f"{file}: {e}") from None
    except (TypeError, ValueError, RuntimeError) as e:  # found by fuzzing: e.g. "preprocess": "null"
        raise AtomddError(
            f"{file}: its preprocessing metadata is malformed ({e}); not written by atomdd"
        ) from None
    return syn


_IMAGE_KEYS = ("images", "image_syn", "images_syn", "x", "data")
_LABEL_KEYS = ("labels", "label_syn", "labels_syn", "y", "targets")


def _peer_tensors(obj: Any, file: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(images, labels, provenance) from the structures the published code saves."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)):
        exps = obj["data"]
        if not exps or not isinstance(exps[-1], (list, tuple)) or len(exps[-1]) != 2:
            raise AtomddError(
                f"{file}: 'data' must be a non-empty list of [images, labels] pairs (DC/DSA/DM/DataDAM's "
                "format)"
            )
        # DC/DSA/DM/DataDAM append one [image_syn, label_syn] per experiment: the last is the final one
        return exps[-1][0], exps[-1][1], {"experiment": len(exps) - 1, "experiments": len(exps)}
    if isinstance(obj, dict):
        img = next((obj[k] for k in _IMAGE_KEYS if k in obj), None)
        lab = next((obj[k] for k in _LABEL_KEYS if k in obj), None)
        if img is not None and lab is not None:
            return img, lab, {}
        raise AtomddError(
            f"{file}: expected {{'data': [[images, labels], ...]}} or a dict with one of the keys "
            f"{list(_IMAGE_KEYS)} and one of {list(_LABEL_KEYS)}; found keys {sorted(map(str, obj))}"
        )
    if isinstance(obj, (list, tuple)) and len(obj) == 2:
        return obj[0], obj[1], {}
    raise AtomddError(
        f"{file}: expected {{'data': [[images, labels], ...]}}, an (images, labels) pair or a dict of "
        f"images and labels; found {type(obj).__name__}"
    )


def _peer_refusal(file: Path, torch_message: str) -> AtomddError:
    """Our message for a file torch's weights-only unpickler refused: what it would import, nothing of
    torch's advice (which suggests loading it with weights_only=False, i.e. running its code)."""
    named = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if named:
        return AtomddError(
            f"{file} was refused: loading it would import and run {named.group(1)}. atomdd reads a peer's "
            "file as tensors, numbers, lists and dicts only, and runs nothing from it. Re-save the images "
            "and labels as plain tensors if you trust the file"
        )
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", torch_message)
    reason = found.group(1).split(". Please")[0].strip() if found else "not a plain torch.save file"
    return AtomddError(f"{file} is not a torch.save file that can be read safely: {reason}")


def load_peer_set(
    path: str | os.PathLike,
    dataset: str | Dataset,
    data_root: str | os.PathLike | None = None,
    zca: bool = False,
) -> SyntheticSet:
    """A `.pt` saved by the published DC/DSA/DM/DataDAM code, as a `SyntheticSet` of `dataset`.

    Their images are already normalised (and ZCA-whitened when they used ZCA, e.g. CIFAR): pass
    `zca` as they did, and the same preprocessing is fitted on the named dataset and attached.
    Of a multi-experiment file, the last experiment is taken. Loaded with `weights_only=True`: a
    file that needs to run code to load is refused.
    """
    file = Path(path)
    if not file.is_file():
        raise AtomddError(f"no such file: {file}")
    try:
        # from memory: read from a file, a pickle's forged length field makes Python allocate that many
        # bytes up front (fuzzing: 2.4 GB for a 1 KB file); a BytesIO hands back only what is there
        raw = io.BytesIO(file.read_bytes())
        with warnings.catch_warnings():  # torch warns about pickle protocols; the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(raw, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _peer_refusal(file, str(e)) from None
    except Exception as e:  # noqa: BLE001  (damaged bytes raise nearly any type; fuzzing found IndexError)
        why = (
            str(e).strip().splitlines()[0] if str(e).strip() else f"{type(e).__name__} (truncated or empty?)"
        )
        raise AtomddError(f"{file} is not a readable torch.save file: {why}") from None
    images, labels, prov = _peer_tensors(obj, file)
    data = as_dataset(dataset, data_root)
    want = (data.channels, *data.image_size)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise AtomddError(f"{file}: images must be a float N×C×H×W tensor (model space), got {got}")
    if tuple(images.shape[1:]) != want:
        raise AtomddError(f"{file}: images are {tuple(images.shape[1:])}, {data.name} needs {want} (C×H×W)")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise AtomddError(f"{file}: labels must be an integer tensor (one class index per image)")
    if labels.shape != (len(images),):
        raise AtomddError(f"{file}: {len(images)} images but labels of shape {tuple(labels.shape)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < data.num_classes:
        raise AtomddError(
            f"{file}: labels range {int(labels.min())}–{int(labels.max())}, {data.name} has classes "
            f"0–{data.num_classes - 1}"
        )
    if not bool(torch.isfinite(images).all()):
        raise AtomddError(f"{file}: images contain NaN or infinite values")
    return SyntheticSet.of(
        images.detach().float().contiguous(),
        labels.long(),
        data,
        data.preprocess(zca),
        {"method": "peer", "source": str(file), "dataset_hash": data.content_hash, **prov},
    )


def load_any(
    path: str | os.PathLike,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    zca: bool = False,
) -> SyntheticSet:
    """An atomdd run folder / `synthetic.safetensors`, or a peer's `.pt` (which needs `dataset`)."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors" or p.name == SET_FILE:
        return load_synthetic(p)
    if not p.exists():
        raise AtomddError(f"no such file or folder: {p}")
    if dataset is None:
        raise AtomddError(f"{p} is not an atomdd set; for a peer's .pt name its dataset (--dataset NAME)")
    return load_peer_set(p, dataset, data_root, zca=zca)
