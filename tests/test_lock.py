"""One writer per output folder (issue 29: 1): a second process is refused at once, naming the
holder; every command that writes a folder takes the lock; a killed holder blocks nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from atomdd.errors import AtomddError
from atomdd.lock import LOCK_FILE, hold

TINY = ["--dataset", "digits", "--ipc", "1", "--model", "convnet(width=16)", "--batch-real", "8", "--quiet"]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def atomdd(*argv: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atomdd", *argv]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def recorded_pid(folder: Path) -> int | None:
    """The pid the folder's lock file names (its holder's, or its last holder's)."""
    try:
        return int(json.loads((folder / LOCK_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def wait_held(folder: Path, pid: int, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while recorded_pid(folder) != pid:
        assert time.monotonic() < end, f"process {pid} did not take the lock of {folder} in {timeout} s"
        time.sleep(0.1)


@contextmanager
def held_elsewhere(folder: Path) -> Iterator[int]:
    """Another process holds `folder` for the block; yields its pid."""
    code = "import sys, time\nfrom atomdd.lock import hold\nwith hold(sys.argv[1]):\n    time.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=ENV)
    try:
        wait_held(folder, proc.pid)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_two_processes_one_out_the_second_is_refused_at_once(tmp_path: Path) -> None:
    """The issue's case: before, both exited 0 and the folder mixed the two runs."""
    out = tmp_path / "run"
    first = atomdd("distill", *TINY, "--iterations", "3000", "--checkpoint-every", "1000", "--out", str(out))
    try:
        wait_held(out, first.pid)
        t0 = time.monotonic()
        second = atomdd(
            "distill", *TINY, "--method", "dm", "--iterations", "30", "--seed", "1", "--out", str(out)
        )
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"is in use by another atomdd process (pid {first.pid} on " in err and "distill" in err
        assert "Traceback" not in err and time.monotonic() - t0 < 60
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"] == "atom" and record["config"]["seed"] == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's rows, each once


def _make_set(folder: Path) -> None:
    from atomdd import distill

    distill("digits", 1, "dm", out=folder, iterations=1, width=8, batch_real=8)


@pytest.mark.parametrize("command", ["distill", "coreset", "evaluate", "nas", "grid", "export"])
def test_every_command_that_writes_a_folder_is_refused_while_another_holds_it(
    capsys, tmp_path: Path, command: str
) -> None:
    from atomdd.cli import main

    folder = tmp_path / "out"
    if command == "evaluate":
        _make_set(folder)
    if command == "export":
        _make_set(tmp_path / "set")
    argv = {
        "distill": ["distill", *TINY, "--iterations", "1", "--out", str(folder)],
        "coreset": ["coreset", "--dataset", "digits", "--ipc", "1", "--out", str(folder)],
        "evaluate": ["evaluate", str(folder), "--models", "mlp(width=8)", "--epochs", "1", "--repeats", "1"],
        "nas": ["nas", "--dataset", "digits", "--proxies", "random", "--epochs", "1", "--out", str(folder)],
        "grid": ["grid", "--dataset", "digits", "--methods", "random", "--ipc", "1", "--out", str(folder)],
        "export": ["export", str(tmp_path / "set"), "--format", "imagefolder", "--out", str(folder)],
    }
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    with held_elsewhere(folder) as pid:
        code, err = main(argv[command]), capsys.readouterr().err
    assert code != 0 and f"is in use by another atomdd process (pid {pid} on " in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == sorted({*before, LOCK_FILE})  # nothing written


def test_a_search_sharing_a_truth_cache_in_use_is_refused(capsys, tmp_path: Path) -> None:
    """`nas --truth-dir` names a cache other searches (other --out) may share: one writer at a time."""
    from atomdd.cli import main

    truth = tmp_path / "truth"
    argv = ["nas", "--dataset", "digits", "--proxies", "random", "--epochs", "1", "--truth-dir", str(truth)]
    with held_elsewhere(truth) as pid:
        code, err = main([*argv, "--out", str(tmp_path / "b")]), capsys.readouterr().err
    assert code != 0 and f"{truth} is in use by another atomdd process (pid {pid} on " in err, err
    assert sorted(p.name for p in truth.iterdir()) == [LOCK_FILE]  # nothing written


def test_a_killed_holder_blocks_nothing(capsys, tmp_path: Path) -> None:
    from safetensors import safe_open

    from atomdd.cli import main

    out = tmp_path / "run"
    first = atomdd("distill", *TINY, "--iterations", "3000", "--checkpoint-every", "1", "--out", str(out))
    try:
        wait_held(out, first.pid)
        while not (out / "checkpoint.safetensors").exists():
            time.sleep(0.1)
    finally:
        first.kill()  # SIGKILL: no handler runs; the kernel releases the lock
        first.wait()
    assert recorded_pid(out) == first.pid  # its record is left behind, and holds nothing
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        step = int(f.metadata()["step"])
    assert main(["distill", *TINY, "--iterations", str(step + 2), "--resume", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done" and record["step"] == step + 2


def test_the_lock_nests_in_one_process_and_is_released_after(tmp_path: Path) -> None:
    with hold(tmp_path), hold(tmp_path):  # `distill()` holds it, and the driver inside it again
        assert recorded_pid(tmp_path) == os.getpid()
    with held_elsewhere(tmp_path) as pid, pytest.raises(AtomddError, match=f"pid {pid} "):  # released
        hold(tmp_path).__enter__()
