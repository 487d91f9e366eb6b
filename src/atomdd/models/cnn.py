"""Plain feed-forward networks of DC/DM/DataDAM's `networks.py`: AlexNet, VGG-11, LeNet and MLP.

All four are one `PlainNet`: conv blocks [conv, norm, activation, 2×2 max pool], then hidden linear
layers [linear, ReLU], then a linear classifier. Sizes follow the published code at 28 px
(1 channel) and 32 px (3 channels) and stay valid from 8 to 64 px: a pool is skipped where it would
take the map below 2×2 (instance norm of a 1×1 map is a constant, which would cut the input off),
and a final map larger than the published one is adaptively averaged down to it, so the classifier
keeps its published width. Hidden linear outputs are exposed as B×C×1×1 activation maps.
"""

from __future__ import annotations

import torch
from torch import nn

from atomdd.models import FeatureModel, Features, ModelSpec, register
from atomdd.models.layers import NORMS, norm_layer, run_conv_blocks

# One conv block: (out channels, kernel, padding, max-pool after it).
ConvCfg = tuple[int, int, int, bool]


class PlainNet(FeatureModel):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        convs: list[ConvCfg],
        hidden: tuple[int, ...] = (),
        norm: str = "none",
        head_size: int | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        size, in_ch = image_size, channels
        for out_ch, kernel, pad, pool in convs:
            size = size + 2 * pad - kernel + 1
            shrink = pool and size >= 4
            conv = nn.Conv2d(in_ch, out_ch, kernel, padding=pad)
            step = nn.MaxPool2d(2, 2) if shrink else nn.Identity()
            self.blocks.append(
                nn.ModuleDict(
                    {"conv": conv, "norm": norm_layer(norm, out_ch), "act": nn.ReLU(), "pool": step}
                )
            )
            size, in_ch = (size // 2 if shrink else size), out_ch
        squeeze = head_size is not None and size > head_size
        self.head = nn.AdaptiveAvgPool2d(head_size) if squeeze else nn.Identity()
        width = in_ch * (head_size if squeeze else size) ** 2
        self.hidden = nn.ModuleList()
        for h in hidden:
            self.hidden.append(nn.Sequential(nn.Linear(width, h), nn.ReLU()))
            width = h
        self.embedding_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        x, acts = run_conv_blocks(self.blocks, x)
        x = self.head(x).flatten(1)
        for layer in self.hidden:
            x = layer(x)
            acts.append(x[:, :, None, None])
        return Features(acts, x)


def alexnet(channels: int, num_classes: int, image_size: int, norm: str = "none") -> PlainNet:
    """DC's AlexNet (norm="batchnorm" is its AlexNetBN): 5 convs 128-192-256-192-192, fc on 192·4·4."""
    convs = [(128, 5, 4 if channels == 1 else 2, True), (192, 5, 2, True)]
    convs += [(256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
    return PlainNet(channels, num_classes, image_size, convs, norm=norm, head_size=4)


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(channels: int, num_classes: int, image_size: int, norm: str = "instancenorm") -> PlainNet:
    """DC's VGG11 (instance norm; norm="batchnorm" is VGG11BN): 8 convs, linear head on 512."""
    convs: list[ConvCfg] = []
    for i, v in enumerate(VGG11_CFG):
        if v == "M":
            convs[-1] = (*convs[-1][:3], True)
        else:
            convs.append((int(v), 3, 3 if channels == 1 and i == 0 else 1, False))
    return PlainNet(channels, num_classes, image_size, convs, norm=norm, head_size=1)


def lenet(channels: int, num_classes: int, image_size: int) -> PlainNet:
    """DC's LeNet: conv5×5 6, pool, conv5×5 16, pool, fc 120, fc 84. The second conv is padded when
    its input is smaller than 5 px (images under ~14 px), so the maps never vanish."""
    pad1 = 2 if channels == 1 else 0
    after_pool1 = (image_size + 2 * pad1 - 4) // 2
    convs = [(6, 5, pad1, True), (16, 5, 0 if after_pool1 >= 5 else 2, True)]
    return PlainNet(channels, num_classes, image_size, convs, hidden=(120, 84))


def mlp(channels: int, num_classes: int, image_size: int, width: int = 128) -> PlainNet:
    """DC's MLP: flatten, fc width, ReLU, fc width, ReLU, linear classifier."""
    return PlainNet(channels, num_classes, image_size, [], hidden=(width, width))


register(
    ModelSpec(
        name="alexnet",
        description="AlexNet (DC): 5 convs 128-192-256-192-192 with ReLU and max pools, linear head",
        builder=alexnet,
        options={"norm": "none"},
        choices={"norm": NORMS},
    )
)
register(
    ModelSpec(
        name="vgg11",
        description="VGG-11 (DC): 8 conv3×3 layers with norm, ReLU and max pools, linear head on 512",
        builder=vgg11,
        options={"norm": "instancenorm"},
        choices={"norm": NORMS},
    )
)
register(
    ModelSpec(
        name="lenet",
        description="LeNet (DC): conv5×5 6, conv5×5 16 with max pools, fc 120, fc 84, linear head",
        builder=lenet,
    )
)
register(
    ModelSpec(
        name="mlp",
        description="MLP (DC): flatten, two hidden ReLU layers (default 128), linear head",
        builder=mlp,
        options={"width": 128},
        ranges={"width": (1, 65536)},
    )
)
