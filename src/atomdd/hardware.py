"""What a run gets of the machine: its device, its precision (bf16 only where the hardware makes it
fast), and, chosen by the entry points, the CPU allocator and thread count.

A CPU without AMX (or avx512_bf16) runs bf16 matmuls in emulation, hundreds of times slower than
fp32, so asking for bf16 there falls back to fp32 with a warning rather than crawling.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator

import torch

from atomdd.errors import AtomddError
from atomdd.settings import PRECISIONS

# The environment that holds PyTorch's, oneDNN's and MKL's CPU kernels to an older instruction set,
# read when each library loads (so: for a child process): how a CPU with AVX2 and no AVX-512, or an
# older one, is reproduced on a newer machine (the golden test's tolerance, the speed benchmarks).
KERNEL_LIMITS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "sse4.1": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}


def resolve_device(requested: str = "auto") -> torch.device:
    """The device asked for; a bare "cuda" (or "auto" on a GPU machine) is `cuda:LOCAL_RANK` under
    torchrun, one GPU per rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AtomddError(f"device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AtomddError(f"device {requested!r} asked for, but this machine has no usable CUDA GPU")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def fast_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 is slow
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision a run will use: bf16 only where it is fast, fp32 otherwise (with a warning)."""
    if requested not in PRECISIONS:
        raise AtomddError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "bf16" and not fast_bf16(device):
        warnings.warn(
            f"bf16 requested but {torch.device(device)} has no fast bf16 (no AMX / bf16 tensor cores); "
            "using fp32",
            stacklevel=2,
        )
        return "fp32"
    return requested


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    glibc serves every allocation above 32 MB with a fresh mmap, so each activation of a
    distillation step (hundreds of MB) is page-faulted in anew, every step: measured ≈ 2× slower
    steps (benchmarks/distill_speed.py, the "glibc default" rows). Process-wide, so the entry
    points (CLI, benchmarks) call it, not the library on import. Returns whether it applied.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or os.environ.get("ATOMDD_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def other_runnable(reads: int = 5, gap_s: float = 0.01, source: str = "/proc/loadavg") -> int | None:
    """How many tasks besides this one are running or waiting for a CPU now: Linux's count of
    runnable tasks (/proc/loadavg, its 4th field) less this process, the fewest of `reads` reads
    `gap_s` apart, so that a passing blip is not taken for load. None where it cannot be read."""
    counts = []
    try:
        for i in range(reads):
            with open(source) as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
            if i + 1 < reads:
                time.sleep(gap_s)
    except (OSError, ValueError, IndexError):
        return None
    return max(0, min(counts) - 1)


def threads_beside(others: int, cores: int, threads: int) -> int:
    """PyTorch's threads for a CPU that `others` tasks also want: the cores left, at least 1, never
    more than `threads`. Its threads wait for each other at every parallel region, and one whose
    core another process holds keeps the rest waiting a scheduler slice: on 2 cores the demo took
    23 s alone, over 150 s beside one busy process with 2 threads, 36 s with 1
    (benchmarks/shared_cores.sh, docs/performance.md)."""
    return max(1, min(threads, cores - others))


@contextlib.contextmanager
def threads_fitted_to_load(say: Callable[[str], None]) -> Iterator[None]:
    """For a command's duration, fewer PyTorch threads where other processes hold cores at its
    start (the entry point's choice, as the allocator's is), unless OMP_NUM_THREADS chose; `say`
    tells the user. Load that comes later is not followed."""
    threads = torch.get_num_threads()
    others = None if "OMP_NUM_THREADS" in os.environ else other_runnable()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fit = threads_beside(others, cores, threads) if others else threads
    if fit < threads:
        say(
            f"{others} other task(s) are using this machine's {cores} cores: running on {fit} thread(s), "
            f"not {threads} (PyTorch's threads wait for each other where a core is taken); "
            "OMP_NUM_THREADS chooses"
        )
        torch.set_num_threads(fit)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
