"""Coresets: exactly IPC per class from that class; herding and k-center equal brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomdd.coreset import herding, kcenter, select
from atomdd.data.transforms import Preprocess
from atomdd.errors import AtomddError
from atomdd.sets import load_synthetic
from atomdd.settings import CORESET_METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_herding(points: np.ndarray, k: int) -> list[int]:
    """Literal definition: add the point whose inclusion puts the selected mean nearest the mean."""
    mu, chosen = points.mean(0), []
    for _ in range(k):
        best, best_d = None, np.inf
        for i in range(len(points)):
            if i in chosen:
                continue
            d = np.linalg.norm(mu - points[chosen + [i]].mean(0))
            if d < best_d - 1e-12:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def brute_kcenter(points: np.ndarray, k: int, first: int) -> list[int]:
    """Literal definition: add the point farthest from its nearest chosen centre."""
    chosen = [first]
    for _ in range(k - 1):
        best, best_d = None, -np.inf
        for i in range(len(points)):
            if i in chosen:
                continue
            d = min(np.linalg.norm(points[i] - points[c]) for c in chosen)
            if d > best_d + 1e-12:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_hand_made_line():
    line = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [10, 0]])  # mean (3.2, 0)
    # means after each pick: 3 (|3 − 3.2| = 0.2), {3, 2} → 2.5 (0.7), {3, 2, 1} → 2 (1.2 < 1.8 with 10)
    assert herding(line, 3).tolist() == [3, 2, 1]
    assert kcenter(line, 3).tolist() == [3, 4, 0]  # start nearest the mean, then the two extremes
    assert kcenter(line, 2, first=0).tolist() == [0, 4]


@pytest.mark.parametrize("seed", range(5))
def test_selection_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(15, 2)) * [3.0, 1.0]
    k = 6
    assert herding(torch.tensor(points), k).tolist() == brute_herding(points, k)
    first = int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))
    assert kcenter(torch.tensor(points), k).tolist() == brute_kcenter(points, k, first)
    assert kcenter(torch.tensor(points), k, first=7).tolist() == brute_kcenter(points, k, 7)


def test_selection_takes_all_without_repeats():
    dupes = torch.zeros(4, 3)  # every point identical: still k distinct indices
    assert sorted(herding(dupes, 4).tolist()) == [0, 1, 2, 3]
    assert sorted(kcenter(dupes, 4).tolist()) == [0, 1, 2, 3]
    with pytest.raises(AtomddError):
        herding(dupes, 5)


@pytest.mark.parametrize("method", CORESET_METHODS)
def test_coreset_has_ipc_per_class_from_that_class(method, digits):
    ipc = 3
    syn = select(digits, ipc, method, seed=1)
    idx = torch.tensor(syn.meta["indices"])
    assert len(idx) == ipc * digits.num_classes == len(set(idx.tolist()))
    assert torch.equal(torch.bincount(syn.labels), torch.full((digits.num_classes,), ipc))
    assert torch.equal(digits.train_labels[idx], syn.labels)
    assert torch.equal(syn.labels, torch.arange(digits.num_classes).repeat_interleave(ipc))
    prep = Preprocess(digits.mean, digits.std)
    torch.testing.assert_close(syn.images, prep(digits.train_images[idx]))  # model space
    assert syn.meta["method"] == method and syn.meta["seed"] == 1
    assert syn.meta["dataset_hash"] == digits.content_hash
    again = select(digits, ipc, method, seed=1)
    assert again.meta["indices"] == syn.meta["indices"]


def test_herding_picks_the_embedding_herding_would(digits):
    """select() = herding() on the class's embeddings under the documented random ConvNet."""
    from atomdd.coreset import embed_images, embedding_model

    prep = Preprocess(digits.mean, digits.std)
    net = embedding_model(digits, prep, "random", seed=2, device="cpu")
    cls = digits.class_indices()[4]
    expected = cls[herding(embed_images(net, prep(digits.train_images[cls])), 4)]
    syn = select(digits, 4, "herding", seed=2, device="cpu")
    assert syn.meta["indices"][16:20] == expected.tolist()


def test_random_differs_by_seed_and_saves(digits, tmp_path):
    a, b = select(digits, 5, "random", seed=0), select(digits, 5, "random", seed=1)
    assert a.meta["indices"] != b.meta["indices"]
    a.save(tmp_path)
    assert load_synthetic(tmp_path).meta["indices"] == a.meta["indices"]


def test_trained_embedding_and_zca(digits):
    syn = select(digits, 2, "kcenter", embed="trained", embed_epochs=1, zca=True, device="cpu")
    assert syn.meta["embed"] == "trained" and syn.meta["embed_epochs"] == 1
    assert syn.preprocess_meta["zca"] and len(syn.labels) == 20


def test_bad_requests_are_clear_errors(digits):
    smallest = min(range(10), key=lambda c: len(digits.class_indices()[c]))
    count = len(digits.class_indices()[smallest])
    with pytest.raises(AtomddError, match=f"class {smallest} .*{count} train images"):
        select(digits, count + 1, "random")
    with pytest.raises(AtomddError, match="at least 1"):
        select(digits, 0, "herding")
    with pytest.raises(AtomddError, match="unknown coreset method"):
        select(digits, 1, "kmeans")
    with pytest.raises(AtomddError, match="embedding network"):
        select(digits, 1, "random", embed="imagenet")
