"""The built-in datasets' registry entries; each reader lives in the module of its format
(`idx`, `cifar`, `tiny`, `imagefolder`), over the helpers in `files`.

A new dataset is one reader function (folder -> `Dataset`) and one `register` call. Every reader
checks its expected files first, so a missing file is reported by name together with the folder
searched, and every parse is strict: a short, corrupt or foreign file becomes an `AtomddError` that
names it, never a numpy traceback or a silently wrong array.
"""

from __future__ import annotations

from atomdd.data import DatasetSpec, register
from atomdd.data.cifar import CIFAR10_FILES, read_cifar10, read_cifar100
from atomdd.data.idx import IDX_FILES, idx_downloads, read_digits, read_fashion_mnist, read_mnist
from atomdd.data.imagefolder import load_imagefolder
from atomdd.data.tiny import read_tinyimagenet


def _archive(url: str, md5: str) -> tuple[dict, ...]:
    """One archive whose top folder is the dataset's folder."""
    return ({"url": url, "md5": md5, "filename": url.rsplit("/", 1)[1], "extract": True},)


register(
    DatasetSpec(
        name="digits",
        description="scikit-learn's 8×8 handwritten digits (1 797 images), bundled",
        folder="",
        reader=read_digits,
        num_classes=10,
        channels=1,
        image_size=8,
        embedded=True,
    )
)
register(
    DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits, 28×28 gray (IDX files)",
        folder="MNIST/raw",
        reader=read_mnist,
        num_classes=10,
        channels=1,
        image_size=28,
        files=IDX_FILES,
        downloads=idx_downloads(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
    )
)
register(
    DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST clothing, 28×28 gray (IDX files)",
        folder="FashionMNIST/raw",
        reader=read_fashion_mnist,
        num_classes=10,
        channels=1,
        image_size=28,
        files=IDX_FILES,
        downloads=idx_downloads(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    )
)
register(
    DatasetSpec(
        name="cifar10",
        description="CIFAR-10, 32×32 colour, 10 classes (python pickles)",
        folder="cifar-10-batches-py",
        reader=read_cifar10,
        num_classes=10,
        channels=3,
        image_size=32,
        files=(*CIFAR10_FILES, "test_batch", "batches.meta"),
        downloads=_archive(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
        ),
    )
)
register(
    DatasetSpec(
        name="cifar100",
        description="CIFAR-100, 32×32 colour, 100 fine classes (python pickles)",
        folder="cifar-100-python",
        reader=read_cifar100,
        num_classes=100,
        channels=3,
        image_size=32,
        files=("train", "test", "meta"),
        downloads=_archive(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"
        ),
    )
)
register(
    DatasetSpec(
        name="tinyimagenet",
        description="Tiny ImageNet, 64×64 colour, 200 classes (JPEG tree; val = test)",
        folder="tiny-imagenet-200",
        reader=read_tinyimagenet,
        num_classes=200,
        channels=3,
        image_size=64,
        files=("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
        downloads=_archive(
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"
        ),
    )
)
register(
    DatasetSpec(
        name="imagefolder",
        description="your own images: the data root holds one folder per class, resized to 32×32",
        folder="",
        reader=load_imagefolder,
        image_size=32,
    )
)
