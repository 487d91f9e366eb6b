"""The training loop's evaluation options: CutMix mixes images and labels as specified, from a
stream of its own; a teacher's soft labels are trained on by KL; the weights hook gives the
models' weights after an epoch, in both paths (one model, a vmap stack)."""

import copy

import pytest
import torch

from atomdd import train
from atomdd.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cutmix_pastes_a_box_from_the_shuffled_batch_and_mixes_the_labels_by_its_area():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 10, 10).contiguous()
    y = torch.eye(4)  # image i is the constant i, of class i
    for seed in range(20):
        mixed, target = train.cutmix(x, y, torch.Generator().manual_seed(seed))
        replay = torch.Generator().manual_seed(seed)  # CutMix's draws: λ ~ U(0, 1) (β 1), the shuffle
        lam, perm = float(torch.rand((), generator=replay)), torch.randperm(4, generator=replay)
        box = mixed[perm != torch.arange(4)] != x[perm != torch.arange(4)]
        pasted = box.reshape(-1, 10, 10).any(0)  # where any image changed: the box, if there is one
        rows, cols = pasted.any(1), pasted.any(0)
        assert torch.equal(pasted, rows.view(-1, 1) & cols.view(1, -1))  # a rectangle
        area = float(rows.sum() * cols.sum()) / 100 if box.any() else 0.0
        for i in range(4):
            inside = rows.view(-1, 1) & cols.view(1, -1)
            assert torch.equal(mixed[i][:, inside], x[perm[i]][:, inside])  # the partner's pixels in the box
            assert torch.equal(mixed[i][:, ~inside], x[i][:, ~inside])  # its own elsewhere
            torch.testing.assert_close(target[i], (1 - area) * y[i] + area * y[perm[i]])
        assert area <= 1 - lam + 1e-9  # the box's real area (clipped at the edges) weighs the labels


def test_cutmix_draws_from_its_own_stream_so_the_protocol_s_augmentations_stay():
    """With p = 1 every batch is mixed, the labels are probabilities, and the batches and DSA
    draws are those of the hard-label protocol (CutMix's stream is another)."""
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    plain, mixing = (train._RepeatStream(0, 0, train.DSAConfig(), (8, 8)) for _ in range(2))
    config = TrainConfig(cutmix=1.0)
    xb, target = train._soft_batch(x, y[None], [mixing], config, 4, None)
    assert target.shape == (1, 8, 4) and not torch.equal(xb, x)
    assert torch.equal(plain.order(8), mixing.order(8))  # the batch order stream was not touched
    none, labels = train._soft_batch(x, y[None], [plain], TrainConfig(), 4, None)
    assert torch.equal(none, x) and torch.equal(labels[0], torch.eye(4)[y])  # p = 0: one-hot, unmixed


def test_the_teacher_path_trains_on_kl_to_its_softened_outputs(digits):
    """A teacher that is the student's own initial network: the first batch's KL is 0 (the
    cross-entropy would be ≈ ln 10); the loss of a batch is KL(p_T ‖ q_T)·T²."""
    images, labels = digits.preprocess()(digits.train_images[:64]), digits.train_labels[:64]
    config = TrainConfig(epochs=1, repeats=1, batch_size=64, device="cpu")
    (student,) = train.init_models("convnet(width=8)", 1, 10, 8, [0], config.seed)
    teacher = train.Teacher(copy.deepcopy(student).eval(), temperature=2.0)
    seen = []
    train.train_models(
        "convnet(width=8)",
        images,
        labels,
        10,
        config,
        on_epoch=lambda r, e, loss: seen.append(float(loss)),
        teacher=teacher,
    )
    assert seen[0] == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(5, 1, 8, 8, generator=g), torch.softmax(torch.randn(5, 10, generator=g), -1)
    got = train._One(student, "fp32").loss(x, target[None], torch.device("cpu"), temperature=2.0)
    q = torch.log_softmax(student(x) / 2.0, -1)
    want = (target * (target.log() - q)).sum(-1).mean() * 4.0
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("batched", [False, True])
def test_the_weights_hook_gives_each_repeat_s_weights_after_an_epoch(digits, batched):
    images, labels = digits.preprocess()(digits.train_images[:32]), digits.train_labels[:32]
    config = TrainConfig(epochs=2, repeats=2, batch_size=16, device="cpu", batched=batched)
    kept = {}
    models = train.train_models(
        "convnet(width=8)",
        images,
        labels,
        10,
        config,
        on_weights=lambda repeats, e, states: kept.update(
            {(r, e): s for r, s in zip(repeats, states(), strict=True)}
        ),
    )
    assert sorted(kept) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for r, model in enumerate(models):  # after the last epoch: the trained models
        assert all(torch.equal(kept[r, 2][k], v.cpu()) for k, v in model.state_dict().items())
    assert not torch.equal(kept[0, 1]["classifier.weight"], kept[0, 2]["classifier.weight"])
