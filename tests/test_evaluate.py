"""The evaluation protocol: batched = sequential per run, the report, peers' files, precision."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from atomdd import evaluate as ev
from atomdd import sets, train
from atomdd.coreset import select
from atomdd.errors import AtomddError
from atomdd.folders.layout import EVAL_FILE
from atomdd.hardware import fast_bf16, resolve_precision
from atomdd.models import MODELS, ModelSpec
from atomdd.models.convnet import ConvNet
from atomdd.report.tables import eval_table
from atomdd.sets import SyntheticSet
from atomdd.settings import EvalConfig

FAST = EvalConfig(epochs=2, repeats=2, batch_size=16, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_set(digits) -> SyntheticSet:
    return select(digits, 5, "random", seed=0)


@pytest.fixture
def tiny_bn(monkeypatch):
    """A small batch-norm ConvNet, registered for the test only."""
    spec = ModelSpec("tiny_bn", "test", lambda c, k, s: ConvNet(c, k, s, depth=2, width=16, norm="batchnorm"))
    monkeypatch.setitem(MODELS, "tiny_bn", spec)
    return "tiny_bn"


def _train_and_test(name: str, syn: SyntheticSet, digits, config: EvalConfig):
    models = train.train_models(name, syn.images, syn.labels, 10, config)
    test_x = syn.preprocess()(digits.test_images)
    return models, train.test_models(models, test_x, digits.test_labels, config)


@pytest.mark.parametrize("name", ["convnet", "mlp", "tiny_bn"])
def test_batched_equals_sequential(name, small_set, digits, tiny_bn):
    """Same seeds, same per-run accuracies and (nearly) the same weights and BN statistics."""
    batched, acc_b = _train_and_test(name, small_set, digits, replace(FAST, batched=True))
    single, acc_s = _train_and_test(name, small_set, digits, replace(FAST, batched=False))
    assert acc_b == acc_s
    for mb, ms in zip(batched, single, strict=True):
        sb, ss = mb.state_dict(), ms.state_dict()
        assert sb.keys() == ss.keys()
        for key in sb:
            torch.testing.assert_close(sb[key], ss[key], atol=1e-4, rtol=1e-4, msg=key)
    if name == "tiny_bn":  # the running statistics were really updated, per run
        stats = [m.state_dict()["blocks.0.norm.running_mean"] for m in batched]
        assert all(s.abs().sum() > 0 for s in stats) and not torch.equal(stats[0], stats[1])


def test_run_depends_only_on_seed_and_run_number(small_set):
    """Run 1 alone, in a stack of three, or in stacks of one: the same model."""
    cfg = replace(FAST, epochs=1, repeats=3, batched=True)
    three = train.train_models("mlp", small_set.images, small_set.labels, 10, cfg)
    alone = train.train_models("mlp", small_set.images, small_set.labels, 10, cfg, repeats=[1])
    split = train.train_models("mlp", small_set.images, small_set.labels, 10, replace(cfg, stack_size=1))
    for other in (alone[0], split[1]):
        for a, b in zip(three[1].parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.equal(three[0].classifier.weight, three[1].classifier.weight)


def test_default_path_is_batched_on_cuda_only():
    assert train.use_batched(FAST, torch.device("cuda")) and not train.use_batched(FAST, torch.device("cpu"))
    assert train.use_batched(replace(FAST, batched=True), torch.device("cpu"))


def test_training_on_real_subset_beats_chance(digits):
    syn = select(digits, 20, "random", seed=0)
    report = ev.evaluate_set(
        syn, ("convnet",), EvalConfig(epochs=10, repeats=2, device="cpu"), dataset=digits
    )
    assert report["models"]["convnet"]["mean"] > 50  # chance is 10 %; typically ~85 % here


def test_eval_json_schema_and_table(small_set, digits, tmp_path):
    report = ev.evaluate_set(small_set, ("mlp", "lenet"), FAST, out_dir=tmp_path, dataset=digits)
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert saved["models"].keys() == {"mlp", "lenet"}
    for r in saved["models"].values():
        assert len(r["runs"]) == FAST.repeats and all(0 <= a <= 100 for a in r["runs"])
        assert r["mean"] == pytest.approx(np.mean(r["runs"])) and r["std"] == pytest.approx(np.std(r["runs"]))
    assert saved["config"]["epochs"] == FAST.epochs and saved["precision"] == "fp32"
    assert saved["batched"] is False and saved["device"] == "cpu"  # the CPU default path
    assert saved["dataset"] == "digits" and saved["dataset_hash"] == digits.content_hash
    assert saved["set"]["kind"] == "synthetic" and saved["set"]["images"] == 50
    # the report's time covers its models' (each timed from training to testing)
    assert all(r["seconds"] > 0 for r in saved["models"].values()) and "torch" in saved["versions"]
    assert saved["seconds"] >= sum(r["seconds"] for r in saved["models"].values())
    assert saved["models"] == json.loads(json.dumps(report["models"]))
    table = eval_table(report)
    assert "| mlp |" in table and "| lenet |" in table and "±" in table


def test_evaluate_whole(digits, tmp_path):
    cfg = replace(FAST, epochs=5, repeats=1, batch_size=64, lr=0.05)
    report = ev.evaluate_whole(digits, ("mlp",), cfg, out_dir=tmp_path, zca=True)
    assert report["set"] == {"kind": "whole", "images": len(digits.train_labels), "zca": True}
    # the whole train set, ZCA-whitened: an MLP learns digits in a few epochs (measured 93 %; chance 10 %)
    assert (tmp_path / EVAL_FILE).exists() and report["models"]["mlp"]["mean"] > 80


def test_set_from_other_data_or_shape_is_refused(small_set, digits):
    other = replace(small_set, meta={**small_set.meta, "dataset_hash": "0" * 64})
    with pytest.raises(AtomddError, match="different copy"):
        ev.evaluate_set(other, ("mlp",), FAST, dataset=digits)
    wrong = replace(small_set, images=torch.zeros(50, 3, 8, 8))
    with pytest.raises(AtomddError, match="C×H×W"):
        ev.evaluate_set(wrong, ("mlp",), FAST, dataset=digits)
    with pytest.raises(AtomddError, match="unknown model"):
        ev.evaluate_set(small_set, ("nope",), FAST, dataset=digits)


@pytest.mark.parametrize(
    "field, value", [("epochs", 0), ("repeats", 0), ("lr", 0.0), ("decay_at", 2.0), ("precision", "fp16")]
)
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(AtomddError, match=field):
        replace(FAST, **{field: value})


def test_unknown_augmentation_is_an_error():
    with pytest.raises(AtomddError, match="unknown augmentation"):
        replace(FAST, dsa="color_warp")


# --- precision --------------------------------------------------------------------------------


def test_bf16_falls_back_without_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not fast_bf16("cpu")
    with pytest.warns(UserWarning, match="fp32"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_bf16_on_cuda_needs_native_support(monkeypatch):
    """A pre-Ampere GPU "supports" bf16 only by emulation, which is slow: fall back there."""
    native = {"ok": False}
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native["ok"] or including_emulation
    )
    with pytest.warns(UserWarning):
        assert resolve_precision("bf16", "cuda") == "fp32"
    native["ok"] = True
    assert resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(AtomddError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_report_records_the_precision_used(monkeypatch, small_set, digits):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(UserWarning):
        report = ev.evaluate_set(small_set, ("mlp",), replace(FAST, precision="bf16"), dataset=digits)
    assert report["precision"] == "fp32" and report["config"]["precision"] == "bf16"


@pytest.mark.parametrize("batched", [True, False])
def test_bf16_path_runs(small_set, batched):
    """The bf16 path itself (forced, whatever the hardware): fp32 master weights, finite results."""
    cfg = replace(FAST, epochs=1, repeats=2, precision="bf16", batched=batched)
    models = train.train_models("mlp", small_set.images, small_set.labels, 10, cfg)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for m in models for p in m.parameters())


def test_batched_bf16_computes_convolutions_in_bf16():
    """Autocast does not reach convolutions under vmap; the stacked path casts them itself."""
    models = train.init_models("convnet", 1, 10, 8, [0, 1], seed=0)
    x = torch.randn(2, 4, 1, 8, 8)
    with torch.no_grad():
        fp32 = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = torch.stack([m(xi).float() for m, xi in zip(models, x, strict=True)])
        stacked = train._Stack(models, "bf16")(x)
    assert stacked.dtype == torch.float32
    assert (stacked - fp32).abs().max() > 1e-4  # bf16 rounding is there
    torch.testing.assert_close(stacked, amp, atol=5e-2, rtol=5e-2)


# --- peers' files -----------------------------------------------------------------------------


def _peer_images(n_per_class: int = 2, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return torch.randn(len(labels), 1, 8, 8, generator=g), labels


def test_peer_formats(tmp_path, digits):
    x, y = _peer_images()
    torch.save({"data": [[x * 0, y], [x, y]], "accs_all_exps": {"ConvNet": [[50.0]]}}, tmp_path / "dc.pt")
    torch.save((x, y), tmp_path / "pair.pt")
    torch.save({"image_syn": x, "label_syn": y.int()}, tmp_path / "keys.pt")
    for name in ("dc.pt", "pair.pt", "keys.pt"):
        syn = sets.load_peer_set(tmp_path / name, digits)
        assert torch.equal(syn.images, x) and torch.equal(syn.labels, y) and syn.labels.dtype == torch.int64
        assert syn.dataset == "digits" and syn.meta["source"].endswith(name)
    dc = sets.load_peer_set(tmp_path / "dc.pt", digits)
    assert dc.meta["experiment"] == 1 and dc.meta["experiments"] == 2  # the last experiment
    zca = sets.load_peer_set(tmp_path / "pair.pt", digits, zca=True)
    assert zca.preprocess_meta["zca"] and "zca_eigvecs" in zca.preprocess_tensors
    report = ev.evaluate_set(zca, ("mlp",), replace(FAST, epochs=1, repeats=1), dataset=digits)
    assert report["set"]["method"] == "peer"


class Unsafe:
    """Pickled by reference: loading it would import and call code."""


def _malformed(tmp_path) -> dict[str, tuple[str, str]]:
    x, y = _peer_images()
    files = {
        "garbage.pt": (None, "not a torch.save file"),
        "empty.pt": (b"", "not a readable"),
        "truncated.pt": ("cut", "not a readable"),
        "refused.pt": ({"data": [[x, y]], "extra": Unsafe()}, "refused"),
        "structure.pt": ({"weights": x}, "expected"),
        "no_pairs.pt": ({"data": []}, "pairs"),
        "shape.pt": ((torch.randn(20, 3, 8, 8), y), "C×H×W"),
        "uint8.pt": ((torch.zeros(20, 1, 8, 8, dtype=torch.uint8), y), "float"),
        "range.pt": ((x, y + 5), "labels range"),
        "float_labels.pt": ((x, y.float()), "integer"),
        "count.pt": ((x, y[:-1]), "labels of shape"),
    }
    out = {}
    for name, (content, match) in files.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(bytes(range(256)) * 4)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "cut":
            torch.save((x, y), path)
            path.write_bytes(path.read_bytes()[:200])
        else:
            torch.save(content, path)
        out[name] = (str(path), match)
    return out


def test_malformed_peer_files_are_clear_errors(tmp_path, digits):
    for name, (path, match) in _malformed(tmp_path).items():
        with pytest.raises(AtomddError, match=match) as err:
            sets.load_peer_set(path, digits)
        assert name in str(err.value)
    with pytest.raises(AtomddError, match="no such file"):
        sets.load_peer_set(tmp_path / "missing.pt", digits)


def test_load_any_dispatches(tmp_path, small_set, digits):
    small_set.save(tmp_path / "run")
    assert torch.equal(sets.load_any(tmp_path / "run").images, small_set.images)
    torch.save(_peer_images(), tmp_path / "peer.pt")
    with pytest.raises(AtomddError, match="--dataset"):
        sets.load_any(tmp_path / "peer.pt")
    assert sets.load_any(tmp_path / "peer.pt", dataset="digits").meta["method"] == "peer"
    with pytest.raises(AtomddError, match="no such"):
        sets.load_any(tmp_path / "nothing.pt", dataset="digits")


def test_test_limit_reports_the_first_images_apart(small_set, digits):
    """`test_limit` N adds the accuracy of the same models on the first N test images alone."""
    report = ev.evaluate_set(small_set, ["convnet"], replace(FAST, test_limit=40), dataset=digits)
    r = report["models"]["convnet"]
    models, _ = _train_and_test("convnet", small_set, digits, FAST)
    test_x = small_set.preprocess()(digits.test_images)[:40]
    assert r["first"]["images"] == 40
    assert r["first"]["runs"] == train.test_models(models, test_x, digits.test_labels[:40], FAST)
    assert "first 40 test images" in eval_table(report)
    assert "first" not in ev.evaluate_set(small_set, ["convnet"], FAST, dataset=digits)["models"]["convnet"]
    with pytest.raises(AtomddError, match="test_limit"):
        replace(FAST, test_limit=-1)


def test_model_references_key_the_report(small_set, digits):
    spec = "convnet(pool=maxpool,depth=2,norm=batchnorm)"
    report = ev.evaluate_set(small_set, f"{spec},mlp", replace(FAST, repeats=1, epochs=1), dataset=digits)
    key = "convnet(depth=2,norm=batchnorm,pool=maxpool)"
    assert list(report["models"]) == [key, "mlp"]
    assert report["models"][key]["options"] == {"depth": 2, "norm": "batchnorm", "pool": "maxpool"}
    with pytest.raises(AtomddError, match=r"unknown option\(s\) \['dpth'\]"):
        ev.evaluate_set(small_set, ["convnet(dpth=2)"], FAST, dataset=digits)


def test_a_factor_2_set_at_ipc_1_trains_on_4_images_a_class(digits, monkeypatch):
    """Stored: one image a class (what the per-class count checks); trained on: its 2×2 tiles
    decoded, 4 a class; kept apart from the same pixels read as a factor-1 set."""
    stored = select(digits, 1, "random", seed=0)
    factor = replace(stored, factor=2)
    seen, honest = [], train.train_models

    def recording(name, images, labels, *args, **kwargs):
        seen.append((images.shape, labels.bincount().tolist()))
        return honest(name, images, labels, *args, **kwargs)

    monkeypatch.setattr(ev, "train_models", recording)
    cfg = replace(FAST, repeats=1, epochs=1)
    report = ev.evaluate_set(factor, ("mlp",), cfg, dataset=digits)
    assert seen == [((40, 1, 8, 8), [4] * 10)]
    assert report["set"] | {"method": None} == {
        "kind": "synthetic", "images": 10, "ipc": 1, "factor": 2, "decoded_images": 40, "method": None,
    }  # fmt: skip
    key = ev.set_id(stored.images, stored.labels, extra=json.dumps(stored.preprocess_meta))
    assert key != ev.set_id(
        stored.images, stored.labels, extra=json.dumps(stored.preprocess_meta) + ",factor=2"
    )


def test_old_protocol_keys_are_unchanged_and_the_evaluation_options_are_kept_apart(
    small_set, digits, tmp_path
):
    """A hard-label key is what it always was (this one is from a CIFAR-10 grid's eval.json), so
    rows written before the options existed are reused; CutMix and a teacher enter the key only
    when on, so their results never mix with the hard-label ones."""
    from dataclasses import asdict

    from atomdd.folders.evals import protocol_key, repeat_protocol_key

    written = (
        "epochs=300,lr=0.01,momentum=0.9,weight_decay=0.0005,batch_size=256,lr_decay=0.1,decay_at=0.5,"
        "dsa=color_crop_cutout_flip_scale_rotate,seed=0,precision=fp32,test_limit=1000,runs=5"
    )
    assert protocol_key(asdict(EvalConfig(epochs=300, test_limit=1000)), "fp32") == written
    cfg = replace(FAST, repeats=1, epochs=1)
    old_key = repeat_protocol_key(asdict(cfg), "fp32")
    assert "cutmix" not in old_key and repeat_protocol_key(asdict(replace(cfg, cutmix=0.5)), "fp32") == (
        old_key + ",cutmix=0.5"
    )
    row = {"set": ev.set_id(small_set.images, small_set.labels, extra=json.dumps(small_set.preprocess_meta))}
    row |= {"protocol": old_key, "model": "mlp", "run": 0, "accuracy": 12.5, "first": None, "seconds": 1.0}
    (tmp_path / "eval.jsonl").write_text(json.dumps(row) + "\n")  # a row as written before the options
    reused = ev.evaluate_set(small_set, ("mlp",), cfg, out_dir=tmp_path, dataset=digits)
    assert reused["models"]["mlp"]["runs"] == [12.5]  # not trained again
    mixed = ev.evaluate_set(small_set, ("mlp",), replace(cfg, cutmix=0.5), out_dir=tmp_path, dataset=digits)
    assert mixed["models"]["mlp"]["runs"] != [12.5]
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert sorted(saved["results"]) == sorted([f"{old_key},runs=1", f"{old_key},cutmix=0.5,runs=1"])


def test_a_teacher_s_soft_labels_are_an_evaluation_of_their_own(small_set, digits, digits_pool, tmp_path):
    cfg = replace(FAST, repeats=1, epochs=2)
    hard = ev.evaluate_set(small_set, ("convnet(width=16)",), cfg, out_dir=tmp_path, dataset=digits)
    soft = ev.evaluate_set(
        small_set,
        ("convnet(width=16)",),
        replace(cfg, teacher=str(digits_pool)),
        out_dir=tmp_path,
        dataset=digits,
    )
    assert (
        soft["config"]["teacher"].startswith(f"{digits_pool.resolve()}@")
        and len(soft["config"]["teacher"]) > 17
    )
    assert soft["models"] != hard["models"]
    saved = json.loads((tmp_path / EVAL_FILE).read_text())
    assert len(saved["results"]) == 2 and f"teacher={soft['config']['teacher']}" in saved["protocol"]
    zca_set = select(digits, 5, "random", seed=0, zca=True)
    with pytest.raises(AtomddError, match="trained on unwhitened images, this evaluation uses ZCA-whitened"):
        ev.evaluate_set(zca_set, ("mlp",), replace(cfg, teacher=str(digits_pool)), dataset=digits)
    with pytest.raises(AtomddError, match="teacher_temperature .* needs teacher"):
        EvalConfig(teacher_temperature=2.0)


def test_a_batch_norm_model_on_a_set_of_another_scale_is_warned_about(small_set, digits, caplog):
    """The DataDAM code's sets sit at 9–20× the test images' pixel spread; a batch-norm model
    tests with the set's running statistics, so the evaluation says so, naming the model."""
    far = replace(small_set, images=small_set.images * 10)
    config = replace(FAST, epochs=1, repeats=1)
    with caplog.at_level("WARNING", logger="atomdd.evaluate"):
        ev.evaluate_set(far, ["convnet(norm=batchnorm)", "convnet"], config, dataset=digits, progress=False)
    said = [r.getMessage() for r in caplog.records if "spread" in r.getMessage()]
    assert len(said) == 1 and "convnet(norm=batchnorm) has batch norm" in said[0], said
    caplog.clear()
    with caplog.at_level("WARNING", logger="atomdd.evaluate"):
        ev.evaluate_set(far, ["convnet"], config, dataset=digits, progress=False)  # instance norm
        ev.evaluate_set(small_set, ["convnet(norm=batchnorm)"], config, dataset=digits, progress=False)
    assert not [r for r in caplog.records if "spread" in r.getMessage()]
