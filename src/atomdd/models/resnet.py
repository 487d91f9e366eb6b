"""ResNet-18 of DC/DM/DataDAM's `networks.py` (CIFAR style: conv3×3 stride-1 stem, no stem pool).

BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512, instance norm by default (`resnet18_bn`: batch
norm). The published head averages a 4×4 map (32 px input); here a global average pool gives the
512-d embedding at any size. A stage keeps stride 1 where stride 2 would take the map below 2×2
(8–15 px inputs), since instance norm of a 1×1 map is a constant. Activations: the stem and the
output of each of the four stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atomdd.models import FeatureModel, Features, ModelSpec, register
from atomdd.models.layers import NORMS, norm_layer


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm_layer(norm, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(FeatureModel):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        norm: str = "instancenorm",
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), norm_layer(norm, widths[0]), nn.ReLU()
        )
        self.stages = nn.ModuleList()
        in_ch, size = widths[0], image_size
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = 2 if i > 0 and size >= 4 else 1
            size = -(-size // stride)  # ceil: a 3×3 conv with padding 1
            layers = [
                BasicBlock(in_ch if j == 0 else width, width, stride if j == 0 else 1, norm) for j in range(n)
            ]
            self.stages.append(nn.Sequential(*layers))
            in_ch = width
        self.embedding_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        acts = [x]
        for stage in self.stages:
            x = stage(x)
            acts.append(x)
        return Features(acts, x.mean(dim=(2, 3)))


for _name, _norm in (("resnet18", "instancenorm"), ("resnet18_bn", "batchnorm")):
    register(
        ModelSpec(
            name=_name,
            description=f"ResNet-18 (DC): BasicBlock [2,2,2,2], 64-wide 3×3 stem, {_norm}, global avg pool",
            builder=ResNet,
            options={"norm": _norm},
            choices={"norm": NORMS},
        )
    )
