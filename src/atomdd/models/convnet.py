"""ConvNet: the distillation backbone and default evaluation model (DC/DM/DataDAM's ConvNet).

depth × [3×3 conv, norm, activation, pool], then a linear classifier on the flattened map. With one
input channel the first conv pads by 3, as the published code does (28 px → 32 px maps).
"""

from __future__ import annotations

import torch
from torch import nn

from atomdd.models import FeatureModel, Features, ModelSpec, Powers, PowerSums, fused, register
from atomdd.models.layers import (
    ACTIVATIONS,
    NORMS,
    POOLINGS,
    activation,
    norm_layer,
    pooling,
    run_conv_blocks,
)


class ConvNet(FeatureModel):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        if not 1 <= depth <= 6:
            raise ValueError("depth must be 1–6")
        self.blocks = nn.ModuleList()
        size = image_size + (4 if channels == 1 else 0)
        in_ch = channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            conv = nn.Conv2d(in_ch, width, 3, padding=pad)
            step = pooling(pool) if size >= 4 else nn.Identity()  # never pool below 2×2
            self.blocks.append(
                nn.ModuleDict(
                    {"conv": conv, "norm": norm_layer(norm, width), "act": activation(act), "pool": step}
                )
            )
            if pool != "none" and size >= 4:
                size //= 2
            in_ch = width
        self.embedding_dim = width * size * size
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        x, acts = run_conv_blocks(self.blocks, x)
        return Features(acts, x.flatten(1))

    def power_sums(self, x: torch.Tensor, powers: Powers) -> tuple[PowerSums, torch.Tensor] | None:
        """The fused kernel's pass after each convolution (`fused.py`), where it applies."""
        if not fused.fusable(self.blocks, x, powers):
            return None
        out, sums = fused.block_sums(self.blocks, x, powers)
        return sums, out.flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass through the fused kernel where it applies (training, testing)."""
        fast = self.power_sums(x, [(None, None)] * len(self.blocks))
        return super().embed(x) if fast is None else fast[1]


register(
    ModelSpec(
        name="convnet",
        description="ConvNet (DC/DM/DataDAM backbone): depth × [conv3×3, norm, act, pool], linear head",
        builder=ConvNet,
        options={"depth": 3, "width": 128, "norm": "instancenorm", "act": "relu", "pool": "avgpool"},
        choices={"norm": NORMS, "act": ACTIVATIONS, "pool": POOLINGS, "depth": (1, 2, 3, 4, 5, 6)},
        ranges={"width": (1, 4096)},
        size_defaults=((64, {"depth": 4}),),  # the published evaluation network from 64 px on
    )
)
