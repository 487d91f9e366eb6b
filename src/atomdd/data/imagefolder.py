"""A user's own class-per-folder tree of images, decoded once and then cached beside it (`cache`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from atomdd.data import Dataset
from atomdd.data.cache import cached_splits, files_key
from atomdd.data.files import _dataset, _decode_all
from atomdd.errors import AtomddError

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

    files = [f for f, _ in train + test]
    labels = np.array([c for _, c in train + test], np.int64)
    splits = (slice(0, len(train)), slice(len(train), None))
    tag = f"atomdd-imagefolder-cache-v1 size={image_size} grayscale={grayscale}"
    key = files_key(tag, files, labels, path, "the image folder")

    def decode() -> tuple[np.ndarray, np.ndarray]:
        gray = all(_image_mode(f) in _GRAY_MODES for f in files) if grayscale is None else grayscale
        mode, shape = ("L" if gray else "RGB"), (image_size, image_size)
        return tuple(_decode_all(files[s], mode, image_size, shape) for s in splits)

    cache = path / f"atomdd-cache-{image_size}px.safetensors"
    images = cached_splits(cache, key, (len(train), len(test)), (None, image_size, image_size), decode)
    (x_train, x_test), (y_train, y_test) = images, (labels[s] for s in splits)
    return _dataset("imagefolder", path, (x_train, y_train), (x_test, y_test), classes)
