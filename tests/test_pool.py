"""Pools of trained networks: built member by member with the evaluation's training loop (a stopped
build continues), the step's network picked and mixed from (seed, step), calibration added as its
cross-entropy, and a pool of other data, preprocessing or backbone refused, saying which."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from atomdd import pool as pools
from atomdd.data import Dataset
from atomdd.distillation import step as steps
from atomdd.distillation.config import make_config
from atomdd.distillation.driver import Distiller
from atomdd.errors import AtomddError
from atomdd.folders.layout import POOL_RECORD
from atomdd.models import ModelRef
from atomdd.sets import decode
from atomdd.settings import PoolSettings
from atomdd.train import init_models

FAST = dict(model="convnet(width=16)", batch_real=16, log_every=1)


def test_a_pool_is_built_member_by_member_and_a_stopped_build_continues(tmp_path, monkeypatch, digits):
    settings = PoolSettings("digits", "convnet(width=8)", members=2, epochs=2, snapshot_every=1)
    whole, record = pools.build(settings, tmp_path / "whole", digits)
    assert record["snapshots"] == [1, 2] and [d["member"] for d in record["done"]] == [0, 1]
    assert record["dataset_hash"] == digits.content_hash and record["model"] == "convnet(width=8)"
    assert all(0 <= d["accuracy"] <= 100 and d["seconds_per_epoch"] > 0 for d in record["done"])
    built = pools.load(whole)
    (start,) = init_models("convnet(width=8)", 1, 10, 8, [1], 0)  # epoch 0: the member's own initial weights
    assert all(torch.equal(built.state(1, 0)[k], v) for k, v in start.state_dict().items())
    assert not torch.equal(built.state(1, 2)["classifier.weight"], start.classifier.weight)

    honest, trained = pools.train_models, []

    def stopped(*args, **kwargs):
        if args[5] == [1]:
            raise KeyboardInterrupt  # the build stopped while training network 2
        trained.extend(args[5])
        return honest(*args, **kwargs)

    monkeypatch.setattr(pools, "train_models", stopped)
    with pytest.raises(KeyboardInterrupt):
        pools.build(settings, tmp_path / "part", digits)
    with pytest.raises(AtomddError, match="incomplete \\(1 of 2 networks\\)"):
        pools.load(tmp_path / "part")
    monkeypatch.setattr(pools, "train_models", lambda *a, **k: trained.extend(a[5]) or honest(*a, **k))
    pools.build(settings, tmp_path / "part", digits)
    assert trained == [0, 1]  # network 1 was kept, network 2 trained on the second call
    again = pools.load(tmp_path / "part")
    assert again.weights.keys() == built.weights.keys()
    assert all(torch.equal(again.weights[k], v) for k, v in built.weights.items())
    with pytest.raises(AtomddError, match="holds another pool \\(it differs in train\\)"):
        pools.build(dataclasses.replace(settings, lr=0.1), tmp_path / "part", digits)


def test_each_step_picks_a_member_and_snapshot_from_its_seed_and_mixes_it_with_its_start(digits_pool):
    pool = pools.load(digits_pool)
    assert pool.choices == [(0, 2), (0, 3), (1, 2), (1, 3)]
    picks = [steps.pool_pick(0, s, pool) for s in range(200)]
    assert picks == [steps.pool_pick(0, s, pool) for s in range(200)]  # a function of (seed, step)
    assert {p[:2] for p in picks} == set(pool.choices) and all(0 <= p[2] < 1 for p in picks)
    assert picks != [steps.pool_pick(1, s, pool) for s in range(200)]
    cfg = make_config("digits", 1, "dm", pool_dir=str(digits_pool), **FAST)
    member, epoch, mix = picks[7]
    plain = steps.network(cfg, 1, 10, (8, 8), 7, "cpu", pool).state_dict()
    mixed = steps.network(
        dataclasses.replace(cfg, pool_interp=True), 1, 10, (8, 8), 7, "cpu", pool
    ).state_dict()
    for name, trained in pool.state(member, epoch).items():
        assert torch.equal(plain[name], trained)
        want = mix * pool.state(member, 0)[name] + (1 - mix) * trained  # θ = l·θ_0 + (1 − l)·θ_epoch
        torch.testing.assert_close(mixed[name], want, rtol=1e-6, atol=1e-6)


def test_calibration_adds_the_class_mean_cross_entropy_of_the_augmented_images(digits_pool):
    """calib · Σ_k mean CE of class k's augmented (decoded) synthetic images under the step's network."""
    cfg = make_config("digits", 1, "dm", pool_dir=str(digits_pool), factor=2, **FAST)
    losses, terms = {}, {}
    for w in (0.0, 1.0, 2.0):
        d = Distiller(dataclasses.replace(cfg, match=dataclasses.replace(cfg.match, calib=w)))
        loss, terms[w] = d.loss_and_grad(0)
        losses[w] = float(loss)
    net = d.network(0)
    images, labels = decode(d.syn.detach(), d.labels, 2)
    aug = steps.draw(10, (8, 8), steps.generator(cfg.seed, 0, "aug"), d.task.dsa, "cpu")
    ce = float(F.cross_entropy(net(aug.apply(images, labels)), labels, reduction="sum")) / 4
    assert "calib" not in terms[0.0] and float(terms[1.0]["calib"]) == pytest.approx(ce, rel=1e-5)
    assert losses[2.0] - losses[0.0] == pytest.approx(2 * ce, rel=1e-4)
    with pytest.raises(AtomddError, match="calib=1.0 needs a pool of trained networks"):
        make_config("digits", 1, "dm", calib=1.0)


def test_a_pool_of_other_data_preprocessing_or_backbone_is_refused(digits_pool, digits, tmp_path):
    other = Dataset(**{f.name: getattr(digits, f.name) for f in dataclasses.fields(Dataset)})
    object.__setattr__(other, "train_images", digits.train_images.clone())
    other.train_images[0, 0, 0, 0] += 1
    cfg = make_config("digits", 1, "dm", pool_dir=str(digits_pool), **FAST)
    with pytest.raises(AtomddError, match="was trained on other data"):
        Distiller(cfg, data=other)
    with pytest.raises(AtomddError, match="on unwhitened images, this run uses ZCA-whitened ones"):
        Distiller(dataclasses.replace(cfg, zca=True))
    with pytest.raises(
        AtomddError, match=r"holds convnet\(width=16\) networks, this run uses convnet\(width=8\)"
    ):
        Distiller(dataclasses.replace(cfg, model="convnet(width=8)"))
    assert str(ModelRef.parse("convnet(width=16,depth=3)")) != "convnet(width=16)"  # spelled otherwise,
    Distiller(dataclasses.replace(cfg, model="convnet(width=16,depth=3)"))  # the same network: accepted
    missing = make_config("digits", 1, "dm-plus", data_root=str(tmp_path), **FAST)
    with pytest.raises(AtomddError, match="atomdd pool --dataset digits --model 'convnet\\(width=16\\)'"):
        Distiller(missing)
    (digits_pool.parent / "bad").mkdir()
    (digits_pool.parent / "bad" / POOL_RECORD).write_text(json.dumps({"dataset": "digits"}))
    with pytest.raises(AtomddError, match="not a pool record written by atomdd"):
        pools.load(digits_pool.parent / "bad")
    record = json.loads((digits_pool / POOL_RECORD).read_text()) | {"members": "2"}  # damaged in a type
    (digits_pool.parent / "bad" / POOL_RECORD).write_text(json.dumps(record))
    with pytest.raises(AtomddError, match="members is str '2', not int"):
        pools.load(digits_pool.parent / "bad")


def test_the_plus_presets_switch_on_factor_images_the_default_pool_and_calibration(tmp_path, digits_pool):
    cfg = make_config("cifar10", 1, "atom-plus")
    assert (cfg.factor, cfg.pool_dir, cfg.pool_interp, cfg.match.calib) == (2, "default", True, 1.0)
    assert (cfg.match.spatial, cfg.match.channel) == (1.0, 1.0)
    assert (
        pools.resolve(cfg.pool_dir, "cifar10", cfg.model, True, tmp_path)
        == tmp_path / "pools" / "cifar10-convnet-zca"
    )
    # the default folder is where `atomdd pool` writes by default: a preset finds the pool built there
    default = pools.default_folder("digits", "convnet(width=16)", False, tmp_path)
    default.parent.mkdir(parents=True)
    default.symlink_to(digits_pool)
    d = Distiller(make_config("digits", 1, "dm-plus", data_root=str(tmp_path), iterations=1, **FAST))
    d.run()
    assert d.task.pool is not None and d.task.per_class == 4
