"""Run a few ranks as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK), each
a fresh Python process running `rank_worker.py`, for the multi-process tests (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("rank_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, job: dict, report_dir: Path, timeout: float = 240.0, collective_timeout: int = 30):
    """Start `world` ranks on `job` (see rank_worker.py); wait for all of them. Returns, per rank,
    (exit status, stderr, its report or None) and the seconds until the last one ended."""
    report_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    start = time.monotonic()
    for r in range(world):
        env = os.environ | {
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "ATOMDD_TIMEOUT": str(collective_timeout),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, str(WORKER), json.dumps(job), str(report_dir / f"rank{r}.json")]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
            out.append(p.returncode)
            out[-1] = (p.returncode, err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - start
    results = []
    for r, (rc, err) in enumerate(out):
        path = report_dir / f"rank{r}.json"
        results.append((rc, err, json.loads(path.read_text()) if path.exists() else None))
    return results, seconds
