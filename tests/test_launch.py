"""torchrun through `python -m atomdd.launch` (issue 29: 1, 9): one lock holder (rank 0); a
second launch into the same folder refused with status 2; SIGTERM ends the job with status 143,
one line and a checkpoint, where torchrun itself printed its own traceback and exited 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atomdd.errors import AtomddError
from atomdd.lock import LOCK_FILE, hold

ENV = os.environ | {"OMP_NUM_THREADS": "1", "ATOMDD_TIMEOUT": "30"}
DISTILL = ["-m", "atomdd", "distill", "--ipc", "1", "--model", "convnet(width=16)", "--batch-real", "16"]


def launch(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atomdd.launch", "--standalone", "--nproc_per_node", "2", *DISTILL]
    cmd += ["--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_torchrun_one_lock_holder_and_sigterm_ends_with_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = launch(out, "--iterations", "100000", "--checkpoint-every", "100000")
    try:
        end = time.monotonic() + 240
        while not (out / "run.json").exists():  # both ranks joined, the loop is under way
            assert job.poll() is None and time.monotonic() < end, job.stderr.read() if job.poll() else ""
            time.sleep(0.2)
        holder = json.loads((out / LOCK_FILE).read_text())["pid"]
        environ = Path(f"/proc/{holder}/environ").read_bytes().split(b"\0")
        assert b"RANK=0" in environ and b"WORLD_SIZE=2" in environ  # rank 0 holds it, no other
        with pytest.raises(AtomddError, match=f"in use by another atomdd process \\(pid {holder} "):
            hold(out).__enter__()
        second = launch(out, "--iterations", "3")
        _, err = second.communicate(timeout=240)
        assert second.returncode == 2, err
        assert f"(rank 0 of 2): {out} is in use by another atomdd process (pid {holder} " in err
        assert "Traceback" not in err and "atomdd: rank 0 ended with status 2" in err
    finally:
        job.send_signal(signal.SIGTERM)  # a scheduler stops the job
        _, err = job.communicate(timeout=240)
    assert job.returncode == 143, err
    assert "Traceback" not in err and "atomdd: torchrun stopped on SIGTERM" in err
    assert err.count("interrupted at step") == 2  # each rank's line
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["step"] >= 1
    step = str(record["step"] + 2)
    done = subprocess.run(
        [sys.executable, *DISTILL, "--iterations", step, "--resume", "--quiet", "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "done"
