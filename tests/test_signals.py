"""Signals during a distillation (issue 29: 2): any number of SIGINT, SIGTERM and SIGHUP, at any
moment (a checkpoint being written included), leave the checkpoint of the step they interrupted,
and the resume is bitwise the uninterrupted run; a closed terminal (SIGHUP) checkpoints too."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STEPS = 80
TINY = ["--dataset", "digits", "--ipc", "1", "--model", "convnet(width=16)", "--batch-real", "8"]


def distill_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "atomdd",
        "distill",
        *TINY,
        "--iterations",
        str(STEPS),
        "--out",
        str(out),
        *extra,
    ]


def wait_started(out: Path, proc: subprocess.Popen) -> None:
    """Until the run's loop is under way (its run.json written)."""
    end = time.monotonic() + 120
    while not (out / "run.json").exists():
        assert proc.poll() is None and time.monotonic() < end, "the run did not start"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's set, made the same way (a process with one thread)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run([*distill_cmd(out), "--quiet"], env=ENV, check=True, timeout=600)
    return load_file(out / "synthetic.safetensors")


@pytest.mark.parametrize("seed", range(4))
def test_a_burst_of_signals_leaves_a_checkpoint_and_a_bitwise_resume(tmp_path: Path, reference, seed) -> None:
    """3–6 signals of any of the three kinds, 50–100 ms apart, from a random moment of the run
    on; half the cases checkpoint every step, so signals land while a checkpoint is written.
    Before: the second SIGINT raised KeyboardInterrupt through the checkpoint (none left; exit
    130 for any signal), and SIGHUP killed the run (no checkpoint, run.json "running")."""
    rng = random.Random(seed)
    out = tmp_path / "run"
    every = "1" if seed % 2 else "1000"
    proc = subprocess.Popen(
        [*distill_cmd(out, "--checkpoint-every", every), "--quiet"],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_started(out, proc)
    time.sleep(rng.uniform(0.0, 1.5))
    sent = []
    for _ in range(rng.randint(3, 6)):
        sent.append(rng.choice(SIGNALS))
        proc.send_signal(sent[-1])
        time.sleep(rng.uniform(0.05, 0.1))
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    record = json.loads((out / "run.json").read_text())
    if proc.returncode == 0:  # it had finished before the first signal
        assert record["status"] == "done"
    else:
        assert proc.returncode == 128 + sent[0], (proc.returncode, sent, err)
        assert record["status"] == "interrupted" and "interrupted at step" in record["error"]
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            step = int(f.metadata()["step"])
        assert 1 <= step == record["step"] <= STEPS
        subprocess.run([*distill_cmd(out, "--resume"), "--quiet"], env=ENV, check=True, timeout=600)
    resumed = load_file(out / "synthetic.safetensors")
    assert all((resumed[k] == reference[k]).all() for k in ("images", "labels"))


def test_a_closed_terminal_leaves_a_checkpoint(tmp_path: Path) -> None:
    """The run's terminal hangs up (an ssh session dropped): SIGHUP, and every later write to the
    terminal fails. Before: killed by SIGHUP (exit 129 by the shell's count, no checkpoint,
    run.json "running")."""
    import fcntl
    import termios

    out = tmp_path / "run"
    master, terminal = os.openpty()

    def own_terminal() -> None:  # the child leads a new session: make the pty its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        distill_cmd(out, "--iterations", "100000", "--checkpoint-every", "100000"),  # progress bar on
        env=ENV,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    reading = threading.Event()
    reading.set()
    screen = threading.Thread(target=_drain, args=(master, reading), daemon=True)  # what a terminal shows
    screen.start()
    wait_started(out, proc)
    time.sleep(1.0)
    reading.clear()
    screen.join()  # (a read in progress would keep the terminal open)
    os.close(master)  # the terminal goes away
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["step"] >= 1
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        assert int(f.metadata()["step"]) == record["step"]


def _drain(fd: int, reading: threading.Event) -> None:
    while reading.is_set():
        if select.select([fd], [], [], 0.1)[0]:
            os.read(fd, 4096)
