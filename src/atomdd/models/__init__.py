"""Networks: one registry; every model exposes per-block activations and the embedding.

The matching loss reads `model.features(x)`: the activation map of each block (B×C×H×W; token
models reshape their tokens to a grid) and the final embedding (B×D, the classifier's input).
`model(x)` returns logits. Every model works for 1 or 3 channels and 8–64 px.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from atomdd.errors import AtomddError, unknown_name


class Features(NamedTuple):
    activations: list[torch.Tensor]  # one B×C×H×W map per block, after its activation
    embedding: torch.Tensor  # B×D, the classifier's input


class FeatureModel(nn.Module):
    """Base class: subclasses implement `features`; `classifier` maps the embedding to logits."""

    classifier: nn.Module

    def features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    builder: Callable[..., FeatureModel]  # builder(channels, num_classes, image_size, **options)
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    choices: dict[str, tuple] = field(default_factory=dict)  # option -> allowed values (when finite)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise unknown_name("model", name, list(MODELS)) from None


def create_model(
    name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **options: Any
) -> FeatureModel:
    """Build a freshly initialised model; unknown or out-of-range options are a clear error."""
    spec = get_spec(name)
    size = image_size if isinstance(image_size, int) else image_size[0]
    if isinstance(image_size, tuple) and image_size[0] != image_size[1]:
        raise AtomddError(f"model {name}: square images only, got {image_size}")
    if channels not in (1, 3):
        raise AtomddError(f"model {name}: 1 or 3 channels supported, got {channels}")
    if not 8 <= size <= 64:
        raise AtomddError(f"model {name}: image size must be 8–64 px, got {size}")
    unknown = set(options) - set(spec.options)
    if unknown:
        raise AtomddError(
            f"model {name}: unknown option(s) {sorted(unknown)}; valid: {sorted(spec.options) or 'none'}"
        )
    merged = {**spec.options, **options}
    for key, allowed in spec.choices.items():
        if merged[key] not in allowed:
            raise AtomddError(f"model {name}: {key}={merged[key]!r} is not one of {list(allowed)}")
    return spec.builder(channels, num_classes, size, **merged)


def seeded_model(
    seed: int, name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **options: Any
) -> FeatureModel:
    """`create_model` with its initial weights drawn from `seed` on the CPU generator (identical on
    every device), leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, channels, num_classes, image_size, **options)


from atomdd.models import convnet, cnn, resnet, vit  # noqa: E402,F401,I001  (registers the built-in models)
