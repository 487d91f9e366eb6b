"""What the benchmarks share: a synthetic problem, the machine's dense rate, CPU time, GPU sync,
a timer of the fastest call, child processes of a benchmark, and a launcher of torchrun-like
ranks. The benchmarks import this module and no other benchmark; they time `Distiller.step()`, the
step a run takes.

Run from the repository root (`python benchmarks/X.py`): Python puts benchmarks/ first on the path.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from atomdd.hardware import KERNEL_LIMITS

# the CPU kinds the speed benchmarks compare, as the environment of a child process: this CPU's own
# kernels, and the same machine held to AVX2 (a CPU with AVX2 and no AVX-512)
ISAS = {"native": {}, "avx2": KERNEL_LIMITS["avx2"]}


def synthetic_problem(classes: int = 10, per_class: int = 300):
    """CIFAR-shaped random pixels (3×32×32, seeded): a step's speed does not depend on content."""
    from atomdd.data import Dataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    names = tuple(map(str, range(classes)))
    return Dataset("random32", images, labels, images[:100], labels[:100], names, (0.5,) * 3, (0.25,) * 3)


def distiller(dataset: str, ipc: int, method: str, classes: int = 10, per_class: int = 300, **settings):
    """A `Distiller` of `method` at `ipc` with `dataset`'s preset, run on `synthetic_problem`."""
    from dataclasses import replace

    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    cfg = make_config(dataset, ipc, method, **settings)
    return Distiller(replace(cfg, dataset="random32"), data=synthetic_problem(classes, per_class))


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock timer measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], reps: int = 5, device: str | torch.device = "cpu") -> float:
    """Fastest of `reps` timed calls after one warm-up: the least disturbed by other load."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 0, reps: int = 5
) -> float:
    """The machine's dense rate: n×n matmuls (default 2048 on a CPU, 8192 on a GPU), the fastest of
    `reps`, the least disturbed by other load."""
    n = n or (8192 if torch.device(device).type == "cuda" else 2048)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_of(lambda: a @ b, reps, device) / 1e9


def cpu_seconds() -> float:
    """CPU seconds this process has used (user and system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _env(tree: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with `extra`, and `tree` (a source tree) first on PYTHONPATH."""
    env = os.environ | (extra or {})
    if tree:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    return env


def children(
    script: str, jobs: list[dict | None], tree: str | None = None, env: dict[str, str] | None = None
) -> list[dict]:
    """`script --child JOB` (JOB as JSON; None: no job) for each of `jobs`, started together, one
    process each (`tree`: a source tree first on their PYTHONPATH; `env`: more variables); each
    child's last line of output, as JSON. A child that fails ends the benchmark with its errors."""
    procs = []
    for job in jobs:
        cmd = [sys.executable, script, "--child", *([json.dumps(job)] if job is not None else [])]
        procs.append(
            subprocess.Popen(
                cmd, env=_env(tree, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = [p.communicate() for p in procs]
    for job, p, (_, err) in zip(jobs, procs, outs, strict=True):
        if p.returncode:
            raise SystemExit(f"child failed: {job} ({tree or 'this tree'}):\n{err[-3000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def child(script: str, job: dict | None, tree: str | None = None, env: dict[str, str] | None = None) -> dict:
    """`children` of one job."""
    return children(script, [job], tree, env)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, job: dict, script: str, tree: str | None = None) -> dict:
    """`world` ranks of `script --rank-job JOB` as torchrun starts them (its environment variables),
    on this machine; `tree`: a source tree put first on their PYTHONPATH. Rank 0's last line."""
    port, procs = free_port(), []
    for r in range(world):
        env = _env(tree, {
            "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(job.get("threads", 1)),
        })  # fmt: skip
        cmd = [sys.executable, script, "--rank-job", json.dumps(job)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate() for p in procs]
    for r, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
        if p.returncode != 0:
            raise SystemExit(f"rank {r} of {world} exited {p.returncode}:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])
