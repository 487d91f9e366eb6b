"""Readers on tiny files written in each publisher's exact format, plus the real MNIST on disk."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atomdd.data import DATASETS, cifar, files, get_spec, load_dataset, tiny
from atomdd.data.files import channel_stats
from atomdd.data.imagefolder import load_imagefolder
from atomdd.errors import AtomddError

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------------
# writers of the official formats


def write_idx(file: Path, array: np.ndarray, gz: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    file = file.with_name(file.name + ".gz") if gz else file
    file.write_bytes(gzip.compress(data) if gz else data)
    return file


def make_idx_set(
    folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = False
) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, gz)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR: byte strings as BINSTRING, `numpy.core` names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)


def write_pickle(file: Path, obj: dict, style: str) -> None:
    if style == "py2":
        with open(file, "wb") as f:
            Py2Pickler(f, protocol=2).dump(obj)
    else:
        file.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_batch(n: int, num_classes: int, label_key: bytes) -> dict:
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"batch",
        label_key: [int(i % num_classes) for i in range(n)],
        b"data": data,
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def make_cifar10(folder: Path, style: str = "py3") -> list[dict]:
    folder.mkdir(parents=True)
    batches = [cifar_batch(4, 10, b"labels") for _ in range(5)]
    for i, b in enumerate(batches, 1):
        write_pickle(folder / f"data_batch_{i}", b, style)
    batches.append(cifar_batch(10, 10, b"labels"))
    write_pickle(folder / "test_batch", batches[-1], style)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 4}, style)
    return batches


def jpeg(file: Path, color: tuple[int, int, int] | int, size: int = 64, mode: str = "RGB") -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color).save(file, "JPEG", quality=95)


def mapped_from(t: torch.Tensor, file: Path) -> bool:
    """Whether `t`'s memory is a mapping of `file` (Linux: /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= t.data_ptr() < hi:
            return len(fields) == 6 and fields[5].strip() == str(file.resolve())
    return False


def make_tinyimagenet(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for wnid, color in zip(wnids, colors, strict=True):
        for j in range(3):
            jpeg(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", color)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    jpeg(folder / "train" / wnids[0] / "images" / f"{wnids[0]}_3.JPEG", 128, mode="L")  # grayscale in the set
    notes = []
    for i in range(6):
        jpeg(folder / "val" / "images" / f"val_{i}.JPEG", colors[i % 3])
        notes.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander, Salamandra\n"
        "n01641577\tbullfrog, Rana catesbeiana\nn99999999\tunused\n"
    )
    return folder


# --------------------------------------------------------------------------------------------------
# registry, digits, hash


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(AtomddError, match="unknown dataset 'cifar11'") as e:
        load_dataset("cifar11")
    for name in ("cifar10", "cifar100", "digits", "fashion-mnist", "imagefolder", "mnist", "tinyimagenet"):
        assert name in str(e.value)


def test_registry_specs_are_complete() -> None:
    for spec in DATASETS.values():
        assert spec.description and callable(spec.reader)
        for item in spec.downloads:
            assert item["url"].endswith(item["filename"]) and len(item["md5"]) == 32


def test_digits_split_scaling_and_stats() -> None:
    ds = load_dataset("digits")
    assert ds.train_images.shape[1:] == (1, 8, 8) and len(ds.train_images) + len(ds.test_images) == 1797
    assert ds.classes == tuple(str(d) for d in range(10))
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0  # 16 → 255
    counts = torch.bincount(ds.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20 %
    assert set(ds.train_images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}
    x = ds.train_images.double() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item()) and ds.std[0] == pytest.approx(
        x.std(correction=0).item()
    )
    assert Path(ds.source).exists()


def test_content_hash_stable_and_pixel_sensitive() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.content_hash == b.content_hash
    images = a.train_images.clone()
    images[5, 0, 3, 3] ^= 1
    assert dataclasses.replace(a, train_images=images).content_hash != a.content_hash


def test_channel_stats_matches_float_computation() -> None:
    x = RNG.integers(0, 256, (7, 3, 5, 5), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(std, f.std(axis=(0, 2, 3)))


# --------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_reader(tmp_path: Path, name: str, folder: str, gz: bool) -> None:
    arrays = make_idx_set(tmp_path / folder, gz=gz)
    ds = load_dataset(name, tmp_path)
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.source == str(tmp_path / folder) and len(ds.classes) == 10
    if name == "fashion-mnist":
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.mean == (0.2861,)
    else:
        assert ds.mean == (0.1307,) and ds.std == (0.3081,)


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_set(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("ATOMDD_DATA", str(tmp_path))
    assert len(load_dataset("mnist").train_images) == 20


def test_missing_files_named_with_folder_and_hints(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(AtomddError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg and str(folder) in msg
    assert "train-images-idx3-ubyte," not in msg  # the present file is not reported
    assert "--data-root" in msg and "ATOMDD_DATA" in msg and "--download" in msg


def test_imagefolder_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(AtomddError, match="not a folder") as e:
        load_dataset("imagefolder", tmp_path / "nope")
    assert "--download" not in str(e.value)


def _idx_error(tmp_path: Path, corrupt) -> str:
    folder = tmp_path / "MNIST" / "raw"
    make_idx_set(folder, gz=True)
    target = folder / "train-images-idx3-ubyte.gz"
    target.write_bytes(corrupt(target.read_bytes()))
    with pytest.raises(AtomddError) as e:
        load_dataset("mnist", tmp_path)
    assert str(target) in str(e.value) and "truncated or corrupt" in str(e.value)
    return str(e.value)


def test_truncated_idx(tmp_path: Path) -> None:
    msg = _idx_error(tmp_path, lambda b: gzip.compress(gzip.decompress(b)[:-100]))
    assert "file ends early" in msg


def test_idx_shorter_than_header(tmp_path: Path) -> None:
    assert "header" in _idx_error(tmp_path, lambda b: gzip.compress(gzip.decompress(b)[:10]))


def test_idx_wrong_magic(tmp_path: Path) -> None:
    assert "magic number 0x00000801" in _idx_error(
        tmp_path, lambda b: gzip.compress(b"\0\0\x08\x01" + b"\0" * 20)
    )


def test_truncated_gzip(tmp_path: Path) -> None:
    assert "gzip" in _idx_error(tmp_path, lambda b: b[: len(b) // 2])


def test_corrupt_gzip(tmp_path: Path) -> None:
    def flip(b: bytes) -> bytes:
        middle = len(b) // 2
        return b[:middle] + bytes(x ^ 0xFF for x in b[middle : middle + 64]) + b[middle + 64 :]

    assert "gzip" in _idx_error(tmp_path, flip)


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    make_idx_set(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(9))
    with pytest.raises(
        AtomddError, match=r"t10k-labels-idx1-ubyte is truncated or corrupt: 9 labels for the 10"
    ):
        load_dataset("mnist", tmp_path)


@pytest.mark.slow
def test_real_mnist_md5_and_shapes(real_mnist: Path) -> None:
    raw = real_mnist / "MNIST" / "raw"
    for item in get_spec("mnist").downloads:
        digest = hashlib.md5((raw / item["filename"]).read_bytes(), usedforsecurity=False).hexdigest()
        assert digest == item["md5"], item["filename"]
    ds = load_dataset("mnist", real_mnist)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_labels.unique().tolist() == list(range(10)) == ds.test_labels.unique().tolist()
    assert ds.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    assert channel_stats(ds.train_images.numpy())[0][0] == pytest.approx(0.1307, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10(tmp_path: Path, style: str) -> None:
    batches = make_cifar10(tmp_path / "cifar-10-batches-py", style)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (10, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    row = batches[1][b"data"][0]  # first image of data_batch_2 = training image 4
    img = ds.train_images[4].numpy()
    assert np.array_equal(img[0].ravel(), row[:1024]) and np.array_equal(img[2].ravel(), row[2048:])
    assert img[1, 0, 1] == row[1024 + 1] and img[0, 1, 0] == row[32]  # G plane col 1; R plane row 1
    assert ds.train_labels.tolist() == [i % 10 for i in range(4)] * 5
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar100(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 20), ("test", 10)):
        batch = cifar_batch(n, 100, b"fine_labels")
        batch[b"coarse_labels"] = [0] * n
        write_pickle(folder / split, batch, "py2")
    names = [f"class{i}".encode() for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, "py2")
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.classes[42] == "class42" and ds.train_images.shape == (20, 3, 32, 32)
    assert ds.test_labels.tolist() == list(range(10)) and ds.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing_files(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(
        AtomddError, match=r"cifar10: missing data_batch_1, .*batches\.meta in .*cifar-10-batches-py"
    ):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(AtomddError) as e:
        load_dataset("cifar10", tmp_path)
    assert f"refused: pickle would import {os.system.__module__}.system" in str(e.value)
    assert "not an official CIFAR batch" in str(e.value) and "data_batch_3" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload,refused",
    [
        (b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R.", "builtins.eval"),
        (b"\x80\x02csubprocess\nPopen\n.", "subprocess.Popen"),
        (pickle.dumps(np.array([1, "x"], dtype=object), protocol=2), "object dtype"),
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.", "_codecs.encode"),
    ],
)
def test_restricted_unpickler_refuses(tmp_path: Path, payload: bytes, refused: str) -> None:
    file = tmp_path / "batch"
    file.write_bytes(payload)
    with pytest.raises(AtomddError, match=f"refused: pickle would import .*{refused}"):
        cifar.read_data_pickle(file)


def test_corrupt_and_foreign_cifar_batches(tmp_path: Path) -> None:
    file = tmp_path / "batch"
    file.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)[:-30])
    with pytest.raises(AtomddError, match="truncated or corrupt: not a readable pickle"):
        cifar.read_data_pickle(file)
    file.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(AtomddError, match="N×3072 uint8"):
        cifar._cifar_batch(file, "labels", 10)
    file.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2))
    with pytest.raises(AtomddError, match="outside 0..9"):
        cifar._cifar_batch(file, "labels", 10)


# --------------------------------------------------------------------------------------------------
# Tiny ImageNet


def test_tinyimagenet_reads_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", tmp_path)
    assert ds.train_images.shape == (10, 3, 64, 64) and ds.test_images.shape == (6, 3, 64, 64)
    assert ds.classes == ("goldfish", "European fire salamander", "bullfrog")
    assert (
        ds.train_labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
        and ds.test_labels.tolist() == [0, 1, 2] * 2
    )
    red = ds.train_images[0].float().mean(dim=(1, 2))
    assert red[0] > 190 and red[1] < 40 and red[2] < 40  # colour kept (JPEG: approximately)
    gray = ds.train_images[3]
    assert torch.equal(gray[0], gray[1]) and abs(gray.float().mean().item() - 128) < 3  # L → RGB
    assert (folder / tiny.TINY_CACHE).exists()
    assert mapped_from(ds.train_images, folder / tiny.TINY_CACHE)  # not a copy: ranks share the pages

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(files, "_decode_image", no_decoding)
    assert load_dataset("tinyimagenet", tmp_path).content_hash == ds.content_hash
    monkeypatch.undo()

    jpeg(folder / "train" / "n01629819" / "images" / "n01629819_0.JPEG", (250, 250, 0))  # edit: cache stale
    assert load_dataset("tinyimagenet", tmp_path).content_hash != ds.content_hash
    assert not [f for f in folder.iterdir() if f.name.endswith(".tmp")]


def test_tinyimagenet_bad_annotation_and_bad_jpeg(tmp_path: Path) -> None:
    folder = make_tinyimagenet(tmp_path)
    notes = folder / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text() + "val_9.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(AtomddError, match="line 7 .* names no class of wnids.txt"):
        load_dataset("tinyimagenet", tmp_path)
    notes.write_text("\n".join(notes.read_text().splitlines()[:6]) + "\n")
    bad = folder / "val" / "images" / "val_2.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(AtomddError, match=f"cannot read image {bad}"):
        load_dataset("tinyimagenet", tmp_path)


# --------------------------------------------------------------------------------------------------
# image folders


def _image(file: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[file.suffix.lower()]
    Image.new(mode, size, color).save(file, fmt)


def test_imagefolder_split_per_class(tmp_path: Path) -> None:
    for i in range(5):
        _image(tmp_path / "cat" / f"{i}.png", 10 * i)
        _image(tmp_path / "dog" / f"{i}.JPG", 200)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.classes == ("cat", "dog") and ds.channels == 3 and ds.image_size == (32, 32)
    assert len(ds.train_images) == 8 and ds.test_labels.tolist() == [0, 1]
    assert ds.source == str(tmp_path) and len(ds.mean) == 3
    again = load_imagefolder(tmp_path)
    assert again.content_hash == ds.content_hash  # deterministic split
    assert load_imagefolder(tmp_path, image_size=16).train_images.shape[2:] == (16, 16)


def test_imagefolder_is_decoded_once_then_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        _image(tmp_path / "cat" / f"{i}.png", 10 * i)
        _image(tmp_path / "dog" / f"{i}.jpg", 200)
    first = load_imagefolder(tmp_path)
    cache = tmp_path / "atomdd-cache-32px.safetensors"
    assert mapped_from(first.train_images, cache) and mapped_from(first.test_images, cache)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(files, "_decode_image", no_decoding)
        assert load_imagefolder(tmp_path).content_hash == first.content_hash
        with pytest.raises(AssertionError, match="decoded although"):  # another size: another decode
            load_imagefolder(tmp_path, image_size=16)
    assert load_imagefolder(tmp_path, grayscale=True).channels == 1  # the forced mode is in the key
    _image(tmp_path / "cat" / "0.png", 99)  # an edited file: decoded again
    assert load_imagefolder(tmp_path).content_hash != first.content_hash


def test_imagefolder_train_test_folders_and_grayscale(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 1)):
        for c in ("a", "b", "c"):
            for i in range(n):
                _image(tmp_path / split / c / f"{i}.bmp", 100, mode="L")
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.channels == 1 and ds.classes == ("a", "b", "c") and len(ds.train_images) == 9
    assert ds.test_labels.tolist() == [0, 1, 2] and ds.train_images.unique().tolist() == [100]
    assert load_imagefolder(tmp_path, grayscale=False).channels == 3
    _image(tmp_path / "train" / "a" / "color.jpeg", 50)
    assert load_imagefolder(tmp_path).channels == 3  # one colour image makes the set RGB


def test_imagefolder_errors(tmp_path: Path) -> None:
    tmp_path.joinpath("empty-root").mkdir()
    with pytest.raises(AtomddError, match="has no class sub-folders"):
        load_imagefolder(tmp_path / "empty-root")
    _image(tmp_path / "tree" / "cat" / "0.png", 1)
    (tmp_path / "tree" / "dog").mkdir()
    with pytest.raises(AtomddError, match=r"class folder .*dog holds no PNG, JPEG or BMP images"):
        load_imagefolder(tmp_path / "tree")
    _image(tmp_path / "tree" / "dog" / "0.png", 1)
    (tmp_path / "tree" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(AtomddError, match=r"cannot read image .*broken\.png"):
        load_imagefolder(tmp_path / "tree")
    _image(tmp_path / "split" / "train" / "a" / "0.png", 1)
    _image(tmp_path / "split" / "test" / "z" / "0.png", 1)
    with pytest.raises(AtomddError, match="has classes z that"):
        load_imagefolder(tmp_path / "split")
