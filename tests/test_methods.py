"""The methods' registry, and the published-code presets: each sets what the published code runs,
batch norm's statistics are grouped as that code groups them, the ZCA refit happens once."""

import json
from dataclasses import replace

import pytest
import torch

from atomdd.api import distill
from atomdd.data.transforms import ZCA
from atomdd.distillation import step as steps
from atomdd.distillation.config import make_config
from atomdd.distillation.driver import Distiller
from atomdd.errors import AtomddError
from atomdd.matching import class_statistics, matching_loss
from atomdd.methods import METHODS
from atomdd.settings import EvalConfig

FAST = dict(width=16, batch_real=16, checkpoint_every=2, log_every=1)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_moves_the_pixels(method, digits_pool):
    pool = {"pool_dir": str(digits_pool)} if METHODS[method].settings.get("pool_dir") else {}
    d = Distiller(make_config("digits", 2, method, iterations=2, **FAST | pool))
    before = d.syn.detach().clone()
    d.run()
    assert not torch.equal(before, d.syn.detach())


def test_the_published_code_presets_set_what_the_published_code_runs():
    dd = make_config("cifar10", 1, "datadam-code").flat()
    assert dd | {"dataset": "x"} == dd | {
        "dataset": "x",
        "model": "convnet(norm=batchnorm)",
        "bn_batch": "all",
        "p_spatial": 1.0,
        "layers": "all-but-last",  # the ReLUs of blocks 1 and 2 of 3
        "spatial": 1.0,
        "channel": 0.0,
        "embedding": 0.01,
        "scale": 100.0,  # each attention term ×100, the embedding ×100 × 0.01
        "zca": True,
        "zca_refit": True,
        "iterations": 20000,
        "lr_img": 1.0,
        "momentum": 0.5,
        "batch_real": 64,
        "init": "real",
    }
    atom = make_config("cifar10", 10, "atom-code").flat()
    assert atom == dd | {"ipc": 10, "method": "atom-code", "channel": 1.0}
    dm = make_config("cifar10", 1, "dm-code").flat()
    assert {k: dm[k] for k in ("model", "zca", "zca_refit", "batch_real", "iterations", "embedding")} == {
        "model": "convnet",
        "zca": False,
        "zca_refit": False,
        "batch_real": 256,
        "iterations": 20000,
        "embedding": 1.0,
    }
    assert dm["spatial"] == dm["channel"] == 0 and dm["scale"] == 1.0
    # where the data is not whitened there is nothing to refit; any setting can be switched back
    assert not make_config("mnist", 1, "datadam-code").zca_refit
    switched = make_config("cifar10", 1, "datadam-code", norm="instancenorm", bn_batch="class")
    assert switched.model_ref().options_for(32)["norm"] == "instancenorm"
    # the evaluations
    ev = EvalConfig.from_preset("datadam-code")
    assert (ev.epochs, ev.batch_size, ev.repeats, ev.preset) == (1800, 64, 10, "datadam-code")
    ev = EvalConfig.from_preset("dm-code", repeats=3)
    assert (ev.epochs, ev.batch_size, ev.repeats) == (1000, 256, 3)
    with pytest.raises(AtomddError, match="unknown evaluation preset 'x'"):
        EvalConfig(preset="x")


def _bn_config(**kw):
    return make_config("digits", 2, "datadam-code", iterations=4, **FAST | kw)


@pytest.mark.parametrize("grouping", ["all", "class"])
def test_batch_norm_statistics_come_from_one_call_per_side(grouping, monkeypatch):
    """bn_batch=all: every class's real images in one call, every synthetic image in another (the
    published code); class: each class apart. Seen from the batch-norm layer, and the loss equals
    one written as the published code computes it."""
    d = Distiller(_bn_config(bn_batch=grouping))
    net = d.network(0)
    sizes = []
    first_bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_bn.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    monkeypatch.setattr(steps.Task, "network", lambda self, step: net)
    loss, _ = d.loss_and_grad(0)
    k, b, ipc = 10, d.task.batch_real, 2
    assert sizes == ([k * b, k * ipc] if grouping == "all" else [b, ipc] * k)
    if grouping == "all":  # the published code's loss: two calls, class means, MSE summed over classes
        gen = steps.generator(d.cfg.seed, 0, "real")
        idx = torch.cat([i[torch.randperm(len(i), generator=gen)[:b]] for i in d.task.class_idx])
        aug = steps.draw(k, d.task.image_size, steps.generator(d.cfg.seed, 0, "aug"), d.task.dsa, "cpu")
        labels = torch.arange(k)
        with torch.no_grad():
            real = class_statistics(
                net.features(aug.apply(d.task.real_images(idx), labels.repeat_interleave(b))), k, d.cfg.match
            )
        syn = class_statistics(
            net.features(aug.apply(d.syn.detach(), labels.repeat_interleave(ipc))), k, d.cfg.match
        )
        want, _ = matching_loss(syn, real, d.task.num_blocks, d.cfg.match)
        torch.testing.assert_close(loss, want.detach())


def test_batch_norm_over_all_classes_is_refused_where_it_cannot_be_split(digits):
    cfg = _bn_config()
    prep = digits.preprocess(False)
    with pytest.raises(AtomddError, match="cannot be split over ranks"):
        steps.Task.build(cfg, digits, prep, torch.device("cpu"), "fp32", own=range(0, 5))
    with pytest.raises(AtomddError, match="fused=false one class per call"):
        Distiller(replace(cfg, run=replace(cfg.run, fused=False)))


def test_batch_norm_resume_is_bit_identical(tmp_path):
    full = distill("digits", 2, "datadam-code", out=tmp_path / "full", **FAST | {"iterations": 4})
    part = tmp_path / "part"
    distill("digits", 2, "datadam-code", out=part, **FAST | {"iterations": 2})
    resumed = distill("digits", 2, "datadam-code", out=part, resume=True, **FAST | {"iterations": 4})
    assert torch.equal(full.images, resumed.images)


def test_zca_refit_is_applied_once_to_the_initial_images_and_recorded(tmp_path):
    settings = FAST | {"zca": True, "zca_refit": True}
    start = Distiller(make_config("digits", 2, "datadam-code", iterations=0, **settings))
    plain = Distiller(
        make_config("digits", 2, "datadam-code", iterations=0, **settings | {"zca_refit": False})
    )
    initial = plain.syn.detach()
    want = ZCA(plain.prep.zca.eps).fit([initial])(initial)
    torch.testing.assert_close(start.syn.detach(), want)
    assert start.syn.detach().std() < initial.std()  # whitened by the spread of 20 images alone
    # recorded in run.json; a resumed run continues its pixels and does not refit them again
    full = distill("digits", 2, "datadam-code", out=tmp_path / "full", **settings | {"iterations": 4})
    part = tmp_path / "part"
    distill("digits", 2, "datadam-code", out=part, **settings | {"iterations": 2})
    resumed = distill("digits", 2, "datadam-code", out=part, resume=True, **settings | {"iterations": 4})
    assert torch.equal(full.images, resumed.images)
    refit = json.loads((part / "run.json").read_text())["resolved"]["zca_refit"]
    assert refit["images"] == 20 and refit["eps"] == 0.1 and refit["std_after"] < refit["std_before"]
    with pytest.raises(AtomddError, match="zca_refit .* needs zca=true"):
        make_config("digits", 2, "datadam-code", zca_refit=True)
