"""Building blocks shared by the registered models."""

from __future__ import annotations

import torch
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


def pooling(kind: str) -> nn.Module:
    return {
        "avgpool": lambda: nn.AvgPool2d(2, 2),
        "maxpool": lambda: nn.MaxPool2d(2, 2),
        "none": nn.Identity,
    }[kind]()


def run_conv_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """conv → norm → act → pool per block; returns the pooled output and each block's activation."""
    acts = []
    for block in blocks:
        x = block["act"](block["norm"](block["conv"](x)))
        acts.append(x)
        x = block["pool"](x)
    return x, acts
