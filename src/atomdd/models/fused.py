"""A ConvNet block's memory-bound half in one pass: instance norm, ReLU, attention powers, pool.

Between two convolutions PyTorch's ops move a block's whole map through memory six to eight times
(norm statistics, norm, ReLU, |f|^p, two sums, the pool), each a kernel of its own over maps of
hundreds of MB: 30–40 % of an ATOM step on a 2-core CPU, and none of it counted by the FLOP limit
(docs/performance.md). `fused_block.c` does all of it in one pass per image (its statistics) and
one per pair of rows (the rest, while they sit in the L1 cache), forward and backward. The maps are
channels-last (N×H×W×C in memory), the layout in which oneDNN's convolutions run fastest on AVX2
above all (`benchmarks/conv_forms.py`), so `block_sums` runs the blocks' convolutions on it too.

It is compiled with the system's C compiler on first use (a second; kept in `$ATOMDD_KERNEL_DIR`,
default ~/.cache/atomdd/kernels, under a name keyed by the source and the flags) for the kernels
PyTorch itself runs (`torch.backends.cpu.get_cpu_capability()`: AVX-512, AVX2, or the baseline),
and called through ctypes. It is built with OpenMP and loaded after PyTorch, so the loader links it
to the libgomp PyTorch brought: it runs on PyTorch's own threads, as many as `torch.set_num_threads`
says (a second thread pool beside PyTorch's would spin against it). Each sample's result is computed
by one thread in a fixed order, so the thread count changes no bit. Without a compiler, or with
`ATOMDD_NO_FUSED=1`, PyTorch's ops run as before; the two agree to float rounding
(`tests/test_fused.py`).

Its callers: `ConvNet.power_sums`, the pooled maps and the power sums the matching loss needs, and
`ConvNet.embed`, the network's forward pass in training and testing; autograd runs through a
Function whose backward is the kernel's, for the input and the norm's weight and bias.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atomdd.io import user_cache
from atomdd.models import Powers, PowerSums
from atomdd.models.layers import AvgPool2x2

log = logging.getLogger(__name__)

DISABLE_ENV = "ATOMDD_NO_FUSED"  # 1: PyTorch's ops only (the A/B benchmarks, a suspected kernel bug)
KERNEL_DIR_ENV = "ATOMDD_KERNEL_DIR"  # where the built kernel is kept (default ~/.cache/atomdd/kernels)
SOURCE = Path(__file__).with_name("fused_block.c")
# the compiler's flags: reassociation lets the sums vectorise; no -ffast-math, whose startup code
# would flush denormals to zero in the whole process
FLAGS = ["-O3", "-funroll-loops", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
FLAGS += ["-fno-signed-zeros", "-fassociative-math"]
# the ISA PyTorch runs; a compiler without these names (gcc before 11) builds for the baseline
MARCH = {"AVX512": "-march=x86-64-v4", "AVX2": "-march=x86-64-v3"}
POWERS = (1, 2, 4)  # the attention powers the kernel computes (|f| = f after the ReLU)
# the maps' layout: channels-last, in which oneDNN's convolutions are fastest on AVX2 and AVX-512
# (`benchmarks/conv_forms.py`) and the kernel's loops run over a position's channels
LAYOUT = torch.channels_last


def _kernel_dir() -> Path:
    return Path(os.environ.get(KERNEL_DIR_ENV) or user_cache("kernels"))


def _build(flags: list[str]) -> Path | None:
    """The kernel built with `flags` (kept, and reused while the source and flags are the same)."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target = _kernel_dir() / f"fused_block-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            command = [os.environ.get("CC", "cc"), *flags, str(SOURCE), "-o", str(out), "-lm"]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            os.replace(out, target)  # atomic: concurrent processes build the same file
    except (OSError, subprocess.SubprocessError) as e:
        log.info("the fused ConvNet kernel could not be built with %s (%s)", " ".join(flags), e)
        return None
    return target


@cache
def _library(capability: str) -> ctypes.CDLL | None:
    """The compiled kernel for `capability`, built on first use; None where it cannot be built
    (PyTorch's ops then run)."""
    target = (capability in MARCH and _build([*FLAGS, MARCH[capability]])) or _build(FLAGS)
    if not target:
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    i32 = ctypes.c_int
    lib.block_forward.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, f32, i32, i32] + [ptr] * 5
    lib.block_backward.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i32, i32] + [ptr] * 7
    lib.block_forward.restype = lib.block_backward.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The kernel for the ISA PyTorch runs now, or None (disabled, or no compiler)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    return _library(torch.backends.cpu.get_cpu_capability())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Block(torch.autograd.Function):
    """y (the convolution's output) → (pooled map, Σ_c a^p_sp, Σ_hw a^p_ch), a = ReLU(norm(y)) with
    the norm's weight and bias."""

    @staticmethod
    def forward(ctx, y, weight, bias, eps: float, p_sp: int, p_ch: int, sp: bool, ch: bool):
        n, c, h, w = y.shape
        y, weight, bias = y.contiguous(memory_format=LAYOUT), weight.contiguous(), bias.contiguous()
        mean, rstd = y.new_empty(n, c), y.new_empty(n, c)
        pooled = torch.empty(n, c, h // 2, w // 2, dtype=y.dtype, device=y.device, memory_format=LAYOUT)
        sums_sp = y.new_empty(n, h, w) if sp else None
        sums_ch = y.new_empty(n, c) if ch else None
        library().block_forward(
            *(y.data_ptr(), n, c, h, w, weight.data_ptr(), bias.data_ptr(), eps, p_sp, p_ch),
            *map(_ptr, (mean, rstd, pooled, sums_sp, sums_ch)),
        )
        ctx.save_for_backward(y, weight, bias, mean, rstd)
        ctx.powers = (p_sp, p_ch)
        ctx.set_materialize_grads(False)
        return pooled, sums_sp, sums_ch

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        if all(g is None for g in grads):
            return (None,) * 8
        y, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, h, w = y.shape
        g_y, zeros = torch.empty_like(y), y.new_zeros(max(h * w, h // 2 * (w // 2) * c))
        # each sample's share of the weight and bias gradients, summed over the samples below
        g_weight = y.new_empty(n, c) if ctx.needs_input_grad[1] else None
        g_bias = y.new_empty(n, c) if ctx.needs_input_grad[2] else None
        formats = (LAYOUT, torch.contiguous_format, torch.contiguous_format)  # the pooled map's, the sums'
        grads = [  # kept alive through the call
            None if g is None else g.contiguous(memory_format=f) for g, f in zip(grads, formats, strict=True)
        ]
        library().block_backward(
            *(y.data_ptr(), n, c, h, w, *map(_ptr, (weight, bias, mean, rstd)), *ctx.powers),
            *map(_ptr, (*grads, zeros, g_y, g_weight, g_bias)),
        )
        g_weight, g_bias = (None if g is None else g.sum(0) for g in (g_weight, g_bias))
        return g_y, g_weight, g_bias, None, None, None, None, None


def fusable(blocks: nn.ModuleList, x: torch.Tensor, powers: Powers) -> bool:
    """Whether `block_sums` runs these ConvNet blocks on x: a float32 CPU map outside autocast and
    vmap, instance norm, ReLU and the 2×2 average pool in every block on even-sized square maps,
    powers the kernel has, and the kernel built."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or len(powers) != len(blocks):
        return False
    if any(p is not None and p not in POWERS for pair in powers for p in pair) or x.shape[-2] != x.shape[-1]:
        return False
    size = x.shape[-1]
    for block in blocks:
        norm, conv = block["norm"], block["conv"]
        if not (isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine):
            return False
        if not (isinstance(block["act"], nn.ReLU) and isinstance(block["pool"], AvgPool2x2)):
            return False
        size = size + 2 * conv.padding[0] - conv.kernel_size[0] + 1
        if size % 2:
            return False
        size //= 2
    return library() is not None


class _ThinConv(torch.autograd.Function):
    """A frozen convolution of an image with few channels (the first block's), whose input gradient
    is one matmul and a fold: oneDNN's backward to 3 channels is slow (the forward and input
    gradient of 256 CIFAR images took 72.7 ms natively and 56.2 held to AVX2 on a 2-core AMD EPYC,
    this 44.8 and 43.7: `benchmarks/conv_forms.py`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        ctx.conv, ctx.size = conv, x.shape[-2:]
        return conv(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        conv = ctx.conv
        weight = conv.weight.detach()
        n, c_out = grad.shape[:2]
        cols = torch.matmul(weight.reshape(c_out, -1).t(), grad.reshape(n, c_out, -1))
        return F.fold(cols, ctx.size, conv.kernel_size, padding=conv.padding), None


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)`, through `_ThinConv` where only x needs a gradient and it has few channels."""
    thin = x.requires_grad and x.shape[1] <= 4 and not any(p.requires_grad for p in conv.parameters())
    return _ThinConv.apply(x, conv) if thin and torch.is_grad_enabled() else conv(x)


def block_sums(blocks: nn.ModuleList, x: torch.Tensor, powers: Powers) -> tuple[torch.Tensor, PowerSums]:
    """Run ConvNet blocks on x (where `fusable`): the last block's pooled map and, per block, the
    sums Σ_c a^p (B×H×W) and Σ_{h,w} a^p (B×C) of its activation a for the powers `powers[i]`
    names (None: that sum is not made)."""
    sums, x = [], x.contiguous(memory_format=LAYOUT)
    for block, (p_sp, p_ch) in zip(blocks, powers, strict=True):
        wanted = (p_sp is not None, p_ch is not None)
        norm, powers_ = block["norm"], (int(p_sp or 1), int(p_ch or 1))
        x, sp, ch = _Block.apply(_conv(block["conv"], x), norm.weight, norm.bias, norm.eps, *powers_, *wanted)
        sums.append((sp, ch))
    return x, sums
