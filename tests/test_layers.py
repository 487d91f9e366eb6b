"""The two layers of distillation and what sits around them: the pure step over a range of classes,
the main-process guard on every write, figures redrawn from a run folder, no backend switched."""

import subprocess
import sys

import torch

from atomdd import parallel
from atomdd.api import distill
from atomdd.distillation import driver, step
from atomdd.distillation.config import make_config
from atomdd.report.images import save_run_figures

FAST = dict(width=16, batch_real=16, checkpoint_every=2, log_every=1)


def test_the_step_over_class_ranges_adds_up_to_the_whole_step():
    cfg = make_config("digits", 2, "atom", chunk_images=64, **FAST)
    d = driver.Distiller(cfg)
    whole = torch.nn.Parameter(d.syn.detach().clone())
    loss, _ = step.loss_and_grad(d.task, whole, 5)
    parts = torch.nn.Parameter(d.syn.detach().clone())
    shards = [range(0, 3), range(3, 7), range(7, 10)]  # as three ranks would take them
    total = sum(float(step.loss_and_grad(d.task, parts, 5, classes)[0]) for classes in shards)
    assert abs(total - float(loss)) <= 1e-4 * abs(float(loss))
    torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-5, atol=1e-7)
    # a range touches only its own classes' pixels
    own = torch.nn.Parameter(d.syn.detach().clone())
    step.loss_and_grad(d.task, own, 5, range(3, 7))
    assert own.grad[: 3 * 2].abs().sum() == 0 and own.grad[7 * 2 :].abs().sum() == 0
    assert own.grad[3 * 2 : 7 * 2].abs().sum() > 0


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    assert parallel.is_main_process() and parallel.world_size() == 1 and parallel.rank() == 0
    monkeypatch.setattr("atomdd.folders.run.is_main_process", lambda: False)
    monkeypatch.setattr("atomdd.sets.is_main_process", lambda: False)
    monkeypatch.setattr("atomdd.lock.is_main_process", lambda: False)  # the folder's lock is rank 0's
    result = distill("digits", 1, "atom", out=tmp_path / "run", iterations=2, **FAST)
    assert len(result.labels) == 10 and not (tmp_path / "run").exists()


def test_figures_are_redrawn_from_the_run_folder(tmp_path, digits):
    distill("digits", 1, "atom", out=tmp_path, iterations=2, **FAST)
    for name in ("grid.png", "attention.png"):
        (tmp_path / name).unlink()
    save_run_figures(tmp_path, digits)  # no live run: run.json, the set file and the dataset
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "attention.png").stat().st_size > 0


def test_the_library_leaves_the_matplotlib_backend_alone(tmp_path):
    code = (
        "import sys; from atomdd import distill; "
        f"distill('digits', 1, 'atom', out={str(tmp_path)!r}, iterations=1, width=16, batch_real=16); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported (it picks a backend)'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "attention.png").exists()
