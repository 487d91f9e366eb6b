import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from atomdd.api import distill
from atomdd.distillation import step as steps
from atomdd.distillation.config import DistillConfig, make_config
from atomdd.distillation.driver import Distiller
from atomdd.errors import AtomddError, Interrupted
from atomdd.folders.layout import CHECKPOINT
from atomdd.methods import METHODS
from atomdd.sets import encode, load_synthetic
from atomdd.signals import stop_on_signals

# Small but real: digits (8×8), a narrow ConvNet, few steps.
FAST = dict(width=16, batch_real=16, checkpoint_every=2, log_every=1)


def config(**kw):
    return make_config("digits", kw.pop("ipc", 2), kw.pop("method", "atom"), **{**FAST, **kw})


def test_fused_pass_equals_per_class_loop():
    cfg = config(iterations=1, chunk_images=4096)
    fused, loop = Distiller(cfg), Distiller(replace(cfg, run=replace(cfg.run, fused=False)))
    assert len(fused._class_chunks()) == 1 and len(loop._class_chunks()) == 10
    loss_f, terms_f = fused.loss_and_grad(0)
    loss_l, terms_l = loop.loss_and_grad(0)
    assert torch.allclose(loss_f, loss_l, rtol=1e-5, atol=1e-6)
    assert terms_f.keys() == terms_l.keys()
    torch.testing.assert_close(fused.syn.grad, loop.syn.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zca", [False, True])
def test_real_images_kept_uint8_without_zca_are_the_float_ones(digits, zca):
    """Without ZCA a run keeps its real images as read (a quarter of float32's memory) and
    normalises each batch: bitwise the images the whole-set conversion gives; ZCA whitens once."""
    d = Distiller(config(zca=zca))
    assert d.task.real.dtype == (torch.float32 if zca else torch.uint8)
    idx = torch.tensor([0, 5, 17, 1000])
    assert torch.equal(d.task.real_images(idx), d.prep(digits.train_images)[idx])


def test_clip_keeps_every_pixel_a_valid_image_pixel():
    """With a large image lr the pixels leave [0, 1]; `clip` projects them back after each step (a
    ZCA set too, through the inverse whitening) and leaves pixels already inside unchanged."""
    for zca in (False, True):
        free = distill("digits", 2, "atom", iterations=4, lr_img=100.0, zca=zca, **FAST)
        clipped = distill("digits", 2, "atom", iterations=4, lr_img=100.0, zca=zca, clip=True, **FAST)
        pixels = [s.preprocess().inverse(s.images, clamp=False) for s in (free, clipped)]
        assert pixels[0].min() < -0.1 or pixels[0].max() > 1.1
        assert pixels[1].min() >= -1e-4 and pixels[1].max() <= 1 + 1e-4
    d = Distiller(make_config("digits", 2, "atom", None, **FAST))
    before = d.syn.detach().clone()  # initialised from real images: already valid
    d.project()
    torch.testing.assert_close(d.syn.detach(), before, atol=1e-4, rtol=0)


def test_resume_is_bit_identical(tmp_path):
    cfg = dict(iterations=6, checkpoint_every=3)
    full = distill("digits", 2, "atom", out=tmp_path / "full", **FAST | cfg)
    part = tmp_path / "part"
    distill("digits", 2, "atom", out=part, **FAST | cfg | {"iterations": 3})
    resumed = distill("digits", 2, "atom", out=part, resume=True, **FAST | cfg)
    assert torch.equal(full.images, resumed.images)
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))


def test_resuming_a_finished_run_remakes_its_set_and_keeps_its_record(tmp_path):
    """A resume with nothing left to do (the set file deleted, say) writes the set again from the
    checkpoint and leaves run.json as the run that made it wrote it: its time per step, command
    and commit are not replaced by a process that took no step."""
    cfg = dict(iterations=3, checkpoint_every=3)
    out = tmp_path / "run"
    made = distill("digits", 2, "atom", out=out, **FAST | cfg)
    record = (out / "run.json").read_bytes()
    (out / "synthetic.safetensors").unlink()
    again = distill("digits", 2, "atom", out=out, resume=True, **FAST | cfg)
    assert torch.equal(made.images, again.images)
    assert (out / "synthetic.safetensors").exists()
    assert (out / "run.json").read_bytes() == record
    assert json.loads(record)["seconds_per_step"] is not None


def test_resume_is_bit_identical_with_every_option_on(tmp_path, digits_pool):
    """Factor images, the pool with interpolation, calibration and the cf distance (whose
    frequencies are drawn per step) are pure in (seed, step) too."""
    options = dict(factor=2, pool_dir=str(digits_pool), pool_interp=True, calib=1.0, distance="cf")
    cfg = FAST | options | dict(iterations=4, checkpoint_every=2)
    full = distill("digits", 1, "atom", out=tmp_path / "full", **cfg)
    part = tmp_path / "part"
    distill("digits", 1, "atom", out=part, **cfg | {"iterations": 2})
    resumed = distill("digits", 1, "atom", out=part, resume=True, **cfg)
    assert torch.equal(full.images, resumed.images) and resumed.factor == 2
    logged = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert {"calib", "embedding", "spatial0"} <= set(logged[-1])
    record = json.loads((part / "run.json").read_text())["resolved"]["pool"]
    assert record["folder"] == str(digits_pool) and len(record["weights_sha256"]) == 64


def test_factor_images_start_from_real_images_downscaled_and_tiled(digits):
    """Each stored image holds factor² real images of its class, each the 2×2 means of one, and a
    class's statistics see ipc · factor² decoded images."""
    d = Distiller(config(ipc=1, factor=2))
    stored = d.syn.detach()
    assert stored.shape == (10, 1, 8, 8) and d.task.per_class == 4
    gen = steps.generator(d.cfg.seed, -1, "init")
    picks = [idx[torch.randperm(len(idx), generator=gen)[:4]] for idx in digits.class_indices()]
    real = d.prep(digits.train_images[torch.cat(picks)])
    torch.testing.assert_close(stored, encode(real, 2))
    with pytest.raises(AtomddError, match="factor=3 does not divide the 8×8 images"):
        Distiller(config(ipc=1, factor=3))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_then_resume_matches(tmp_path, monkeypatch, sig):
    cfg = FAST | dict(iterations=8, checkpoint_every=1000)
    full = distill("digits", 2, "atom", **cfg)
    honest = Distiller.loss_and_grad
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the shell started the tests in the background

    def signalled(self, step):
        if step == 3:
            os.kill(os.getpid(), sig)  # arrives mid-run, as Ctrl-C or a pre-emption would
        return honest(self, step)

    monkeypatch.setattr(Distiller, "loss_and_grad", signalled)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="interrupted at step 4.*--resume"), stop_on_signals() as stop:
        distill("digits", 2, "atom", out=out, stop=stop, **cfg)
    monkeypatch.undo()
    assert (out / CHECKPOINT).exists() and not (out / "synthetic.safetensors").exists()
    resumed = distill("digits", 2, "atom", out=out, resume=True, **cfg)
    assert torch.equal(full.images, resumed.images)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_checkpoint_from_another_config_is_refused(tmp_path):
    distill("digits", 2, "atom", out=tmp_path, **FAST | dict(iterations=2))
    with pytest.raises(AtomddError, match=r"lr_img: checkpoint 1\.0 vs now 0\.5"):
        distill("digits", 2, "atom", out=tmp_path, resume=True, **FAST | dict(iterations=4, lr_img=0.5))
    with pytest.raises(AtomddError, match="already holds a run"):
        distill("digits", 2, "atom", out=tmp_path, **FAST | dict(iterations=2))


def test_outputs_are_written_and_load_back(tmp_path):
    result = distill("digits", 3, "atom", out=tmp_path, **FAST | dict(iterations=3))
    for name in (
        "synthetic.safetensors",
        "run.json",
        "grid.png",
        "attention.png",
        "metrics.jsonl",
        CHECKPOINT,
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    loaded = load_synthetic(tmp_path)
    assert torch.equal(loaded.images, result.images) and torch.equal(loaded.labels, result.labels)
    assert loaded.labels.bincount().tolist() == [3] * 10
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "done" and run["config"]["ipc"] == 3 and len(run["dataset"]["hash"]) == 64
    assert {"torch", "atomdd"} <= set(run["versions"]) and run["loss"]["logged"] == 3
    # the preprocessing travels with the set: inverting it gives back [0, 1] images
    shown = loaded.preprocess().inverse(loaded.images)
    assert shown.min() > -0.5 and shown.max() < 1.5


def _probe_loss(d: Distiller) -> float:
    """The loss on fixed held-out steps (networks, batches and augmentations no run step uses)."""
    total = sum(float(d.loss_and_grad(s)[0]) for s in range(10_000, 10_004))
    d.opt.zero_grad(set_to_none=True)
    return total


def test_distillation_lowers_the_loss_on_digits():
    # 8×8 digits oscillate at the preset's image lr 1 over so few steps; at 0.1 the held-out loss
    # halves in 30 steps (measured 0.51×)
    d = Distiller(config(ipc=1, iterations=30, width=32, batch_real=32, lr_img=0.1))
    before = _probe_loss(d)
    d.run()
    after = _probe_loss(d)
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_distillation_lowers_the_loss_on_mnist(real_mnist):
    cfg = make_config("mnist", 1, "atom", data_root=str(real_mnist), iterations=30, width=32, batch_real=32)
    d = Distiller(cfg)
    before = _probe_loss(d)
    d.run()
    after = _probe_loss(d)
    assert after < 0.8 * before, (before, after)


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(AtomddError, match="ipc must be ≥ 1"):
        config(ipc=0)
    with pytest.raises(AtomddError, match="has only"):
        Distiller(config(ipc=500))
    with pytest.raises(AtomddError, match="unknown config key"):
        config(learning_rate=1)
    with pytest.raises(AtomddError, match="unknown method"):
        config(method="mtt")


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = FAST | dict(checkpoint_every=1)
    distill("digits", 2, "atom", out=tmp_path, **cfg | dict(iterations=2))
    honest = Distiller.loss_and_grad

    def poisoned(self, step):
        loss, terms = honest(self, step)
        return (loss * float("nan") if step == 3 else loss), terms

    monkeypatch.setattr(Distiller, "loss_and_grad", poisoned)
    with pytest.raises(AtomddError, match="loss became nan at step 3.*last good checkpoint"):
        distill("digits", 2, "atom", out=tmp_path, resume=True, **cfg | dict(iterations=5))
    monkeypatch.undo()
    d = Distiller(config(iterations=5, checkpoint_every=1))
    d.load_checkpoint(tmp_path)
    assert d.steps_done == 3 and torch.isfinite(d.syn).all()


def test_config_file_and_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr_img: 0.5\np_spatial: 2\nipc: 3\n")
    cfg = make_config(config_file=f, p_spatial=6)
    assert (cfg.dataset, cfg.lr_img, cfg.match.p_spatial, cfg.ipc) == ("digits", 0.5, 6.0, 3)
    assert make_config("digits", 1, config_file=f).ipc == 1  # an explicit argument beats the file
    t = tmp_path / "c.toml"
    t.write_text("unknown_key = 1\n")
    with pytest.raises(AtomddError, match="unknown config key"):
        make_config("digits", 1, "atom", config_file=t)
    assert make_config("cifar10", 10, "atom").zca and make_config("cifar10", 10, "dm").batch_real == 256
    tiny = make_config("tinyimagenet", 1, "atom")
    assert (tiny.model, tiny.match.embedding, tiny.zca) == ("convnet(depth=4)", 0.02, False)
    assert make_config("tinyimagenet", 1, "datadam").match.embedding == 0.02
    # ATOM's λ: DataDAM's 0.01, but on MNIST the 0.1 its ablation chose
    lams = {d: make_config(d, 1, "atom").match.embedding for d in ("cifar10", "digits", "mnist")}
    assert lams == {"cifar10": 0.01, "digits": 0.01, "mnist": 0.1}
    assert make_config("mnist", 1, "atom", embedding=0.3).match.embedding == 0.3  # a flag still wins


def test_bare_config_matches_the_atom_preset():
    # DistillConfig mirrors MatchConfig's fields flat (for config files and flags): its defaults must
    # stay ATOM's, or a DistillConfig built without make_config silently runs another loss
    assert DistillConfig().match == METHODS["atom"].match


def test_backbone_is_a_model_reference():
    cfg = config(model="convnet( pool=maxpool,depth=2)", iterations=1)
    assert cfg.model_ref().options_for(8)["pool"] == "maxpool"
    d = Distiller(cfg)
    assert d.task.num_blocks == 2 and cfg.model == "convnet(depth=2,pool=maxpool,width=16)"  # width folded
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in d.network(0).modules())
    with pytest.raises(AtomddError, match=r"unknown option\(s\) \['dpth'\]"):
        config(model="convnet(dpth=2)")


def test_config_sections_and_the_flat_format():
    from dataclasses import asdict

    cfg = config(ipc=2, p_spatial=2, chunk_images=64, depth=2)
    assert (cfg.match.p_spatial, cfg.run.chunk_images, cfg.model) == (2.0, 64, "convnet(depth=2,width=16)")
    assert DistillConfig.from_dict(asdict(cfg)) == cfg  # run.json and checkpoints hold the nested form
    # a run.json from before the sections: flat keys, ConvNet's options beside the model name
    flat = cfg.flat() | {"model": "convnet", "depth": 2, "width": 16, "norm": "instancenorm", "act": "relu"}
    assert DistillConfig.from_dict(flat) == cfg
    with pytest.raises(AtomddError, match=r"unknown config key\(s\) \['p_spacial'\]; valid: .*p_spatial"):
        config(p_spacial=2)
    with pytest.raises(AtomddError, match=r"model lenet: unknown option\(s\) \[.width.\]"):
        config(model="lenet")  # ConvNet's options are not silently dropped for another model


def test_a_run_is_its_steps_and_the_hooks_see_them(tmp_path):
    """`Distiller.step()` is the loop's body: stepping by hand gives the run's pixels bit for bit
    (clipping included); the log hook sees every logged step, `on_saved` the saved set before
    run.json says done."""
    cfg = config(iterations=3, clip=True)
    by_hand = Distiller(cfg)
    losses = [by_hand.step()[0] for _ in range(3)]
    logged, saved = [], []

    def on_saved(folder, data):
        saved.append(
            (
                json.loads((folder / "run.json").read_text())["status"],
                (folder / "synthetic.safetensors").exists(),
            )
        )

    run = Distiller(cfg)
    result = run.run(tmp_path, on_log=lambda *a: logged.append(a[:2]), on_saved=on_saved)
    assert torch.equal(by_hand.syn, run.syn) and torch.equal(result.images, run.syn.detach())
    assert by_hand.steps_done == run.steps_done == 3
    assert [s for s, _ in logged] == [1, 2, 3] and [v for _, v in logged] == losses
    assert (
        saved == [("running", True)] and json.loads((tmp_path / "run.json").read_text())["status"] == "done"
    )
    assert not (tmp_path / "grid.png").exists()  # figures are the caller's (atomdd.api.distill draws them)
