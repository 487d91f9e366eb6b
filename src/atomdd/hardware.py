"""Which device and precision a run gets: bf16 only where the hardware makes it fast.

A CPU without AMX (or avx512_bf16) runs bf16 matmuls in emulation, hundreds of times slower than
fp32, so asking for bf16 there falls back to fp32 with a warning rather than crawling.
"""

from __future__ import annotations

import warnings

import torch

from atomdd.errors import AtomddError

PRECISIONS = ("fp32", "bf16")


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AtomddError(f"device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AtomddError(f"device {requested!r} asked for, but this machine has no usable CUDA GPU")
    return device


def fast_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
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
