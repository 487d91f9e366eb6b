"""Progress (issue 33: 2): no stretch of work silent for longer than `progress.every()` seconds, in
a pipe as on a terminal, from the CLI and the API alike; `--quiet` / `quiet=True` silence it."""

import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from atomdd import progress

SRC = Path(__file__).resolve().parents[1] / "src"


class _Log(io.StringIO):
    """A log file: not a terminal, and each line's arrival time kept."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, s: str) -> int:
        self.times += [time.monotonic()] * s.count("\n")
        return super().write(s)


def test_a_task_says_it_goes_on_while_one_unit_of_it_takes_long(monkeypatch):
    """One unit longer than the interval (a test pass, a slow step) still gets its lines: the
    ticker writes them, not the work."""
    monkeypatch.setenv(progress.EVERY_ENV, "0.05")
    log = _Log()
    with progress.Progress("train", 4, unit="epoch", file=log) as bar:
        bar.advance(1, "epoch 1/4")
        bar.note("testing on 10000 test images")
        time.sleep(0.5)  # one long unit
        bar.advance(3)
        bar.close("done: 97 %")
    lines = log.getvalue().splitlines()
    assert lines[0] == "train: epoch 0/4 (4 epochs in all)"
    assert sum("testing on 10000 test images (25 %)" in line for line in lines) >= 4, lines
    assert lines[-1] == "train: done: 97 %"
    assert max(b - a for a, b in zip(log.times, log.times[1:], strict=False)) < 0.4


def test_a_stage_of_unknown_length_and_silence():
    log = _Log()
    os.environ[progress.EVERY_ENV] = "0.05"
    try:
        with progress.Progress("distill", None, what="fitting ZCA", file=log):
            time.sleep(0.3)
        with progress.silenced(), progress.Progress("distill", 3, file=log) as bar:
            bar.advance(3)
            time.sleep(0.2)
    finally:
        del os.environ[progress.EVERY_ENV]
    lines = log.getvalue().splitlines()
    assert lines[0] == "distill: fitting ZCA" and len(lines) >= 3
    assert all(re.fullmatch(r"distill: fitting ZCA, 0:00", line) for line in lines[1:]), lines
    assert threading.active_count() == 1 or all(t.name != "progress: distill" for t in threading.enumerate())


def test_the_interval_is_20_s_unless_set(monkeypatch):
    monkeypatch.delenv(progress.EVERY_ENV, raising=False)
    assert progress.every() == 20.0
    for bad in ("x", "-1", "nan", "0"):
        monkeypatch.setenv(progress.EVERY_ENV, bad)
        assert progress.every() == 20.0


def _gaps(argv: list[str], env: dict) -> tuple[list[float], str]:
    """Run `atomdd ARGV` with its output into a pipe; the seconds between consecutive lines, and
    everything it wrote."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomdd", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    times, text = [], []
    for line in proc.stdout:
        times.append(time.monotonic())
        text.append(line)
    assert proc.wait(timeout=600) == 0, "".join(text)
    return [b - a for a, b in zip(times, times[1:], strict=False)], "".join(text)


@pytest.mark.slow
def test_distill_coreset_and_evaluate_in_a_pipe_write_a_line_every_few_seconds(tmp_path):
    """In a pipe (CI, a cluster job's log, `tee`), each command writes a line at least every N
    seconds of work, N = 2 here (the interval is 0.5 s; the rest is slack for a busy machine):
    loading, ZCA, every step, the figures, herding's classes, training and the test passes."""
    env = dict(os.environ, PYTHONPATH=str(SRC), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env[progress.EVERY_ENV] = "0.5"
    tiny = ["--dataset", "digits", "--ipc", "2", "--model", "convnet(width=16)", "--batch-real", "16"]
    run, herd = tmp_path / "run", tmp_path / "herd"
    commands = [
        ["distill", *tiny, "--iterations", "40", "--out", str(run)],
        ["coreset", "--dataset", "digits", "--ipc", "5", "--method", "herding", "--out", str(herd)],
        ["evaluate", str(run), "--models", "convnet(width=16)", "--epochs", "60", "--repeats", "2"],
    ]
    for argv in commands:
        gaps, text = _gaps(argv, env)
        # the first gap is torch's import; herding on digits takes under a second: few lines, no gap
        assert len(gaps) >= 2 and max(gaps[1:]) < 2.0, (argv, gaps, text)
        assert argv[0] + ":" in text or "convnet(width=16):" in text, text
    gaps, text = _gaps([*commands[2][:-2], "--repeats", "3", "--quiet"], env)
    assert "| convnet(width=16) |" in text and "(2 of 3 reused)" in text  # a rerun trains only the third
    assert "loading" not in text and "elapsed" not in text and "× 60 epochs" not in text  # --quiet


def test_the_api_is_not_silent_by_default_and_quiet_when_asked(capsys, tmp_path):
    import atomdd
    from atomdd.coreset import select
    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    tiny = {"iterations": 2, "model": "convnet(width=8)", "batch_real": 8}
    syn = atomdd.distill("digits", 1, "dm", out=tmp_path / "run", **tiny)
    err = capsys.readouterr().err
    assert "distill: loading digits" in err and "distill: step 0/2" in err and "distill: 2 steps" in err
    evaluate_set(syn, ["convnet(width=8)"], EvalConfig(epochs=1, repeats=1))
    assert "evaluate: loading digits" in capsys.readouterr().err
    select("digits", 1, "herding")
    assert "coreset: herding" in capsys.readouterr().err
    atomdd.distill("digits", 1, "dm", quiet=True, **tiny)
    evaluate_set(syn, ["convnet(width=8)"], EvalConfig(epochs=1, repeats=1), progress=False)
    select("digits", 1, "herding", progress=False)
    assert capsys.readouterr().err == ""
