"""Sets that leave atomdd: a `torch.utils.data.Dataset` view for your own training loop, and files
other tools read — an image folder of PNGs, the `.pt` layout of the published DC/DSA/DM/DataDAM
code, and the Hugging Face `datasets` format (the `hf` extra).

Every export holds the images a model trains on: a factor set's decoded images (`SyntheticSet.
decoded`: each stored image's factor×factor tiles, upsampled, its label repeated), so a tool that
knows nothing of factors trains on what atomdd's evaluation trains on.
The set's images live in its model space (normalised, ZCA-whitened where the run used it); a model
trained on them must see test images in the same space, so the view carries the set's fitted
preprocessing (`SetDataset.prepare`). The `.pt` and `datasets` exports keep model space, exactly;
PNGs hold what a person sees (the inverse preprocessing, clamped to [0, 1], 8 bits), which is lossy
for a distilled set (its pixels leave [0, 1]): train from the other formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from atomdd.errors import AtomddError
from atomdd.io import make_folder, write_bytes, write_json
from atomdd.lock import hold
from atomdd.sets import SyntheticSet

FORMATS = ("imagefolder", "pt", "hf")


class SetDataset(TorchDataset):
    """A set as (image, label) pairs in its model space: wrap it in a DataLoader and train.
    `prepare(images)` maps your own images (uint8 N×C×H×W, or floats in [0, 1]) into that space."""

    def __init__(self, syn: SyntheticSet) -> None:
        images, self.labels = syn.decoded()
        self.images = images.float()
        self.classes = syn.classes
        self._prep = syn.preprocess()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return self._prep(images)


def export(syn: SyntheticSet, fmt: str, out: str | Path) -> Path:
    """Write `syn` as `fmt` (one of FORMATS) at `out` (a folder; for "pt" a file); returns the path."""
    if fmt not in FORMATS:
        raise AtomddError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    write = {"imagefolder": _image_folder, "pt": _peer_pt, "hf": _hf}[fmt]
    with hold(None if fmt == "pt" else out):  # a folder is one process's while it is written
        return write(syn, Path(out))


def _image_folder(syn: SyntheticSet, out: Path) -> Path:
    """out/<class>/<index>.png per (decoded) image (what a person sees), and set.json: the labels in
    file order and the preprocessing the PNGs were inverted from."""
    from PIL import Image

    images, labels = syn.decoded()
    pixels = syn.preprocess().inverse(images)  # [0, 1], clamped
    uint8 = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = [_folder_name(c) for c in syn.classes] or [str(c) for c in range(int(labels.max()) + 1)]
    files = []
    for i, (img, label) in enumerate(zip(uint8, labels.tolist(), strict=True)):
        rel = f"{names[label]}/{i:05d}.png"
        make_folder(out / names[label])
        image = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        buffer = _png_bytes(image)
        write_bytes(out / rel, buffer)
        files.append({"file": rel, "label": label})
    record = {"dataset": syn.dataset, "classes": list(syn.classes), "images": files}
    write_json(out / "set.json", record | {"preprocess": syn.preprocess_meta, "meta": syn.meta})
    return out


def _png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _folder_name(name: str) -> str:
    """A class name as a folder name: path separators and leading dots replaced."""
    safe = name.replace("/", "_").replace("\\", "_").lstrip(".")
    return safe or "_"


def _peer_pt(syn: SyntheticSet, out: Path) -> Path:
    """The published code's result file: {'data': [[images, labels]]} in model space (what
    `atomdd evaluate FILE --dataset D [--zca]` and the published evaluation scripts read)."""
    import io

    path = out if out.suffix == ".pt" else out / "synthetic.pt"
    images, labels = syn.decoded()
    buffer = io.BytesIO()
    torch.save({"data": [[images.float().clone(), labels.clone()]], "accs_all_exps": {}}, buffer)
    write_bytes(path, buffer.getvalue())
    return path


def _hf(syn: SyntheticSet, out: Path) -> Path:
    """A `datasets.Dataset` saved with `save_to_disk`: columns image (C×H×W floats, model space)
    and label (a ClassLabel with the class names); the set's metadata in its description."""
    try:
        import datasets
    except ImportError:
        raise AtomddError(
            "the Hugging Face export needs the `datasets` package: pip install 'atomdd[hf]'"
        ) from None
    images, labels = syn.decoded()
    names = list(syn.classes) or [str(c) for c in range(int(labels.max()) + 1)]
    c, h, w = images.shape[1:]
    features = datasets.Features(
        {
            "image": datasets.Array3D(shape=(c, h, w), dtype="float32"),
            "label": datasets.ClassLabel(names=names),
        }
    )
    info = datasets.DatasetInfo(
        description=json.dumps({"dataset": syn.dataset, "preprocess": syn.preprocess_meta, "meta": syn.meta}),
        features=features,
    )
    data = {"image": images.float().numpy(), "label": labels.tolist()}
    datasets.Dataset.from_dict(data, features=features, info=info).save_to_disk(str(out))
    return out
