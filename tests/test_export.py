"""Sets that leave atomdd: the Dataset view, and every export read back to the same pixels and labels."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atomdd.api import distill
from atomdd.errors import AtomddError
from atomdd.export import SetDataset, export
from atomdd.sets import SyntheticSet, load_peer_set, load_synthetic

FAST = dict(width=16, batch_real=16, iterations=20)


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("set")
    distill("digits", 2, "atom", out=out, **FAST)
    return out


def test_a_set_trains_in_your_own_loop(digits_set):
    """docs/formats.md's example, run as written on a digits set: a DataLoader over the view, a
    model of your own, the test images prepared into the set's space."""
    page = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    code = re.search(r"own training loop.*?```python\n(.*?)```", page, re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(code.replace('"runs/digits10"', repr(str(digits_set))), scope)
    assert len(scope["train"]) == 20 and scope["train"][3][1].item() == 1
    assert scope["accuracy"] > 0.3  # 20 images, 10 classes: thrice chance


def test_peer_pt_round_trip(digits_set, tmp_path):
    syn = load_synthetic(digits_set)
    path = export(syn, "pt", tmp_path / "set.pt")
    back = load_peer_set(path, "digits")
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)


def test_a_factor_set_leaves_as_its_decoded_images(digits_set, tmp_path):
    """The view and every export hold what a model trains on: each stored image's tiles decoded."""
    from dataclasses import replace

    syn = replace(load_synthetic(digits_set), factor=2)
    images, labels = syn.decoded()
    view = SetDataset(syn)
    assert len(view) == 80 and torch.equal(view[5][0], images[5]) and int(view[5][1]) == int(labels[5])
    back = load_peer_set(export(syn, "pt", tmp_path / "set.pt"), "digits")
    assert torch.equal(back.images, images) and torch.equal(back.labels, labels)
    record = json.loads((export(syn, "imagefolder", tmp_path / "png") / "set.json").read_text())
    assert [r["label"] for r in record["images"]] == labels.tolist()


def test_image_folder_holds_what_a_person_sees(digits_set, tmp_path):
    syn = load_synthetic(digits_set)
    out = export(syn, "imagefolder", tmp_path / "png")
    record = json.loads((out / "set.json").read_text())
    assert [r["label"] for r in record["images"]] == syn.labels.tolist()
    want = (syn.preprocess().inverse(syn.images) * 255).round().to(torch.uint8)
    for r, img in zip(record["images"], want, strict=True):
        assert r["file"].startswith(f"{syn.classes[r['label']]}/")
        got = np.asarray(Image.open(out / r["file"]))
        assert np.array_equal(got, img[0].numpy())


def test_hf_round_trip(digits_set, tmp_path):
    import datasets

    syn = load_synthetic(digits_set)
    out = export(syn, "hf", tmp_path / "hf")
    back = datasets.load_from_disk(str(out)).with_format("torch")
    rows = back[:]
    assert torch.equal(rows["image"], syn.images) and torch.equal(rows["label"], syn.labels)
    assert back.features["label"].names == list(syn.classes)


def test_soft_labels_are_kept_in_the_file(tmp_path):
    soft = torch.softmax(torch.randn(4, 3), 1)
    syn = SyntheticSet(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), "digits", soft_labels=soft)
    syn.preprocess_meta = {"mean": [0.5], "std": [0.25], "zca": False}
    syn.save(tmp_path)
    assert torch.equal(load_synthetic(tmp_path).soft_labels, soft)
    with pytest.raises(AtomddError, match="soft labels must be finite N×K"):
        SyntheticSet(
            torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), "digits", soft_labels=soft[:3]
        )


def test_export_command(digits_set, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomdd",
            "export",
            str(digits_set),
            "--format",
            "pt",
            "--out",
            str(tmp_path / "s.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "20 images" in done.stdout and (tmp_path / "s.pt").exists()
    with pytest.raises(AtomddError, match="unknown export format"):
        export(load_synthetic(digits_set), "zip", tmp_path / "z")
