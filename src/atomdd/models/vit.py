"""A small Vision Transformer for cross-architecture evaluation.

Patch embedding (a stride-`patch` conv; the image is zero-padded symmetrically to a multiple of the
patch), learned position embedding, `depth` pre-norm blocks [LN, multi-head self-attention, LN,
MLP(GELU)], final LayerNorm, then the *mean* of the patch tokens (no class token) as the embedding.
`patch=0` picks ceil(size / 8): an 8×8 grid at 8, 32 and 64 px, 7×7 at 28 px.
Activations: each block's output tokens reshaped to a B×dim×grid×grid map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from atomdd.errors import AtomddError
from atomdd.models import FeatureModel, Features, ModelSpec, register


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B×heads×N×head_dim
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViT(FeatureModel):
    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 6,
        dim: int = 192,
        heads: int = 4,
        patch: int = 0,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        patch = patch or math.ceil(image_size / 8)
        self.grid = math.ceil(image_size / patch)
        if patch < 1 or self.grid < 2:
            raise AtomddError(
                f"model vit: patch must be 1–{image_size // 2} for {image_size} px, got {patch}"
            )
        if depth < 1 or dim < 1 or heads < 1 or dim % heads:
            raise AtomddError(
                f"model vit: need depth ≥ 1 and dim divisible by heads, got {depth}, {dim}, {heads}"
            )
        extra = self.grid * patch - image_size
        self.pad = (extra // 2, extra - extra // 2) * 2  # left, right, top, bottom
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, self.grid**2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.embedding_dim = dim
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # B×N×dim
        acts = []
        for block in self.blocks:
            x = block(x)
            acts.append(x.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid))
        return Features(acts, self.norm(x).mean(dim=1))


register(
    ModelSpec(
        name="vit",
        description="small ViT: patch grid ≤ 8×8, pre-norm blocks (dim 192, depth 6, 4 heads), mean-pooled",
        builder=ViT,
        options={"depth": 6, "dim": 192, "heads": 4, "patch": 0, "mlp_ratio": 2.0},
        ranges={
            "depth": (1, 24),
            "dim": (1, 4096),
            "heads": (1, 64),
            "patch": (0, 64),
            "mlp_ratio": (0.25, 16.0),
        },
    )
)
