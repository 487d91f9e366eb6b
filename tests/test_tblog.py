"""`--tensorboard DIR`: off by default, a clear error without the package, local event files with it."""

import json
import sys

import pytest

from atomdd.cli import main
from atomdd.errors import AtomddError


def test_without_the_package_the_flag_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    from atomdd.tblog import DistillLog

    with pytest.raises(AtomddError, match=r"pip install -e '\.\[tensorboard\]'"):
        DistillLog(tmp_path / "tb")
    argv = ["distill", "--iterations", "1", "--ipc", "1", "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*argv, "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "needs the tensorboard package" in capsys.readouterr().err
    evaluate = ["evaluate", "--whole", "--dataset", "digits", "--epochs", "1", "--repeats", "1"]
    assert main([*evaluate, "--out", str(tmp_path / "ev"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert not (tmp_path / "ev" / "eval.json").exists()  # refused before evaluating


def test_distill_and_evaluate_write_event_files(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import atomdd

    atomdd.distill("digits", 1, "atom", iterations=3, log_every=1, tensorboard=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"distill/loss", "distill/embedding", "distill/spatial0"} <= set(scalars)
    assert [e.step for e in events.Scalars("distill/loss")] == [1, 2, 3]
    assert events.Tags()["images"] == ["distill/synthetic"]
    argv = ["evaluate", "--whole", "--dataset", "digits", "--epochs", "3", "--repeats", "2", "--no-batched"]
    assert main([*argv, "--out", str(tmp_path / "ev"), "--tensorboard", str(tmp_path / "tb-eval")]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    events = EventAccumulator(str(tmp_path / "tb-eval"))
    events.Reload()
    assert events.Scalars("eval/convnet/accuracy")[-1].value == pytest.approx(
        report["models"]["convnet"]["runs"][-1]
    )
    losses = events.Scalars("eval/convnet/train_loss/repeat1")  # one repeat at a time on CPU
    assert [e.step for e in losses] == [1, 2, 3] and all(e.value > 0 for e in losses)
