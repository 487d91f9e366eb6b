"""Building blocks shared by the registered models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
POOLINGS = ("avgpool", "maxpool", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation over a C×H×W map; instance norm is GroupNorm with one group per channel."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(min(4, channels), channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def activation(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}[kind]()


class _AvgPool2x2(torch.autograd.Function):
    """2×2 average pooling, stride 2, of an even-sized N×C×H×W map: row pairs added, then column
    pairs, a few MB of maps at a time (in cache, and no half-size temporary: peak memory as before).
    PyTorch's CPU kernel for NCHW maps was 2.5–8× slower alone on a 2-core AVX2 CPU
    (docs/performance.md). The backward spreads each gradient over its 2×2 block, columns then
    rows: 1.3–1.9× faster than one copy through a 2×2-expanded view, whose innermost run of two
    elements the copy kernel walks element by element (measured on both kinds of CPU, ibid.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = x.new_empty(n, c, h // 2, w // 2)
        maps, flat = x.reshape(n * c, h // 2, 2, w), out.view(n * c, h // 2, w // 2)
        step = max(1, 2**21 // (h * w))  # ≈ 4 MB of row pairs at a time: no half-size temporary
        for i in range(0, n * c, step):
            rows = maps[i : i + step]
            pairs = torch.add(rows[:, :, 0], rows[:, :, 1]).view(len(rows), h // 2, w // 2, 2)
            torch.add(pairs[..., 0], pairs[..., 1], out=flat[i : i + step]).mul_(0.25)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return (grad * 0.25).repeat_interleave(2, dim=3).repeat_interleave(2, dim=2)


def avg_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.avg_pool2d(x, 2)`: the two-pass version for contiguous even-sized maps on a CPU (where it
    was measured), PyTorch's elsewhere and under vmap."""
    even = x.dim() == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
    functorch = torch._C._functorch.is_functorch_wrapped_tensor(x)  # vmap (batched evaluation)
    if even and x.is_cpu and x.is_contiguous() and not functorch:
        return _AvgPool2x2.apply(x)
    return F.avg_pool2d(x, 2)


class AvgPool2x2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2x2(x)


def pooling(kind: str) -> nn.Module:
    return {"avgpool": AvgPool2x2, "maxpool": lambda: nn.MaxPool2d(2, 2), "none": nn.Identity}[kind]()


def run_conv_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """conv → norm → act → pool per block; returns the pooled output and each block's activation."""
    acts = []
    for block in blocks:
        x = block["act"](block["norm"](block["conv"](x)))
        acts.append(x)
        x = block["pool"](x)
    return x, acts
