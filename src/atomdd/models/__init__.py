"""Networks: one registry; every model exposes per-block activations and the embedding.

A model is referred to by a `ModelRef`: a registry name plus options, written
`convnet(depth=2,norm=batchnorm,pool=maxpool)`, checked against the options and choices the
registry declares for that model, with one canonical spelling (options sorted, defaults given
explicitly kept) that keys results (eval.json).

The matching loss reads `model.features(x)`: the activation map of each block (B×C×H×W; token
models reshape their tokens to a grid) and the final embedding (B×D, the classifier's input).
`model(x)` returns logits. Every model works for 1 or 3 channels and 8–64 px.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from atomdd.errors import AtomddError
from atomdd.registry import Registry


class Features(NamedTuple):
    activations: list[torch.Tensor]  # one B×C×H×W map per block, after its activation
    embedding: torch.Tensor  # B×D, the classifier's input


# per block: the powers of its spatial and channel attention a fast path computes (None: not wanted),
# and the sums it gives, Σ_c |a|^p (B×H×W) and Σ_{h,w} |a|^p (B×C)
Powers = list[tuple[float | None, float | None]]
PowerSums = list[tuple[torch.Tensor | None, torch.Tensor | None]]


class FeatureModel(nn.Module):
    """Base class: subclasses implement `features`; `classifier` maps the embedding to logits."""

    classifier: nn.Module

    def features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError

    def power_sums(self, x: torch.Tensor, powers: Powers) -> tuple[PowerSums, torch.Tensor] | None:
        """A fast path for the matching loss, where a model has one for x: per block, Σ_c |a|^p
        (B×H×W) and Σ_{h,w} |a|^p (B×C) of its activation a for the powers `powers[i]` names
        (None: not wanted), and the embedding, without keeping the maps. None: no such path
        (the loss then reads `features`)."""
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and the options it declares. Every option is checked from
    the declaration alone (`check_options`): one of its `choices`, or a number of the default's
    type in its `ranges`; every numeric option must have one, so no model is left unchecked."""

    name: str
    description: str
    builder: Callable[..., FeatureModel]  # builder(channels, num_classes, image_size, **options)
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    choices: dict[str, tuple] = field(default_factory=dict)  # option -> allowed values (when finite)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # option -> (lowest, highest)
    # defaults that depend on the image size, for evaluation: ((from_size, {option: value}), ...)
    size_defaults: tuple[tuple[int, dict[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        unchecked = [k for k in self.options if k not in self.choices and k not in self.ranges]
        if unchecked or (set(self.choices) | set(self.ranges)) - set(self.options):
            raise ValueError(f"model {self.name}: declare choices or a range for every option ({unchecked})")
        check_options(self, self.options)  # the defaults themselves must pass


# the parameters a model may hold (4 GiB of float32 weights): a larger one is a typo (a width of
# 100 000 000 asked for 3.6e17 bytes), refused with its size before anything is allocated
MAX_PARAMETERS = 2**30


MODELS: Registry[ModelSpec] = Registry("model")
register = MODELS.register
get_spec = MODELS.get_spec


def create_model(
    name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **options: Any
) -> FeatureModel:
    """Build a freshly initialised model; unknown or out-of-range options are a clear error."""
    spec, size, merged = check_model(name, channels, num_classes, image_size, **options)
    return spec.builder(channels, num_classes, size, **merged)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether a layer normalises by batch statistics: its output then depends on the rest of the
    batch in train mode, and on the running statistics of what it trained on in eval mode."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_model(
    name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **options: Any
) -> tuple[ModelSpec, int, dict[str, Any]]:
    """Everything `create_model` checks, before any weight is allocated (an evaluation checks each
    model before the first is trained): its spec, the image size and every option."""
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
    check_options(spec, merged)
    _check_size(name, channels, num_classes, size, tuple(sorted(merged.items())))
    return spec, size, merged


def check_options(spec: ModelSpec, options: dict[str, Any]) -> None:
    """Each option one of its declared choices, or a finite number of its default's type within its
    declared range (issue 29: 5: a width of 0 divided by zero, a negative one failed in torch)."""
    for key, value in options.items():
        if key in spec.choices:
            if value not in spec.choices[key]:
                allowed = ", ".join(map(str, spec.choices[key]))
                raise AtomddError(f"model {spec.name}: {key}={value!r} is not one of {allowed}")
            continue
        kind = type(spec.options[key])
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            raise AtomddError(f"model {spec.name}: {key}={value!r} is not of type {kind.__name__}")
        lo, hi = spec.ranges[key]
        if not math.isfinite(value):
            raise AtomddError(f"model {spec.name}: {key}={value!r} is not a finite number")
        if not lo <= value <= hi:
            raise AtomddError(f"model {spec.name}: {key}={value!r} is out of range; choose {lo}–{hi}")


@functools.lru_cache(maxsize=256)
def _check_size(name: str, channels: int, num_classes: int, size: int, options: tuple) -> None:
    """Build the model without memory (the meta device) once per shape: its own refusals become
    messages, and a model past `MAX_PARAMETERS` is refused with its size."""
    try:
        with torch.device("meta"):
            model = get_spec(name).builder(channels, num_classes, size, **dict(options))
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        raise AtomddError(
            f"model {_spelled(name, options)} cannot take {channels}×{size}×{size} images: {e}"
        ) from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise AtomddError(
            f"model {_spelled(name, options)} would hold {count:.3g} parameters ({count * 4 / 1e9:.3g} GB "
            f"of float32 weights) for {channels}×{size}×{size} images; at most {MAX_PARAMETERS:.3g} "
            "(4.3 GB): choose smaller options"
        )


def _spelled(name: str, options: tuple) -> str:
    return f"{name}({','.join(f'{k}={v}' for k, v in options)})" if options else name


def _coerce_option(model: str, key: str, value: Any, default: Any) -> Any:
    """A text value (from a ModelRef string) as the type of the option's default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise AtomddError(
            f"model {model}: {key}={value!r} is not of type {type(default).__name__} (default {default!r})"
        ) from None
    return value


@dataclass(frozen=True)
class ModelRef:
    """A registered model and the options given for it (the rest keep the registry's defaults)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()  # sorted by key

    def __post_init__(self) -> None:
        spec = get_spec(self.name)
        given = dict(self.options)
        unknown = sorted(set(given) - set(spec.options))
        if unknown:
            valid = ", ".join(f"{k} (default {v!r})" for k, v in spec.options.items()) or "none"
            raise AtomddError(f"model {self.name}: unknown option(s) {unknown}; valid options: {valid}")
        clean = {k: _coerce_option(self.name, k, v, spec.options[k]) for k, v in given.items()}
        check_options(spec, clean)
        object.__setattr__(self, "options", tuple(sorted(clean.items())))

    @classmethod
    def parse(cls, text: str | ModelRef) -> ModelRef:
        """`name` or `name(key=value,...)`, e.g. `convnet(depth=2,norm=batchnorm)`."""
        if isinstance(text, ModelRef):
            return text
        if not isinstance(text, str):  # e.g. a config file's `models: [convnet, 7]`
            raise AtomddError(f"model {text!r}: write a name or name(key=value,...), e.g. convnet(depth=2)")
        m = re.fullmatch(r"\s*([\w-]+)\s*(?:\((.*)\))?\s*", text)
        if not m:
            raise AtomddError(f"model {text!r}: write a name or name(key=value,...), e.g. convnet(depth=2)")
        pairs = [p.strip() for p in (m.group(2) or "").split(",") if p.strip()]
        bad = [p for p in pairs if "=" not in p]
        if bad:
            raise AtomddError(f"model {text!r}: options are key=value, got {bad}")
        options = dict(p.split("=", 1) for p in pairs)
        return cls(m.group(1), tuple((k.strip(), v.strip()) for k, v in options.items()))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in self.options)})"

    def options_for(self, image_size: int | None = None) -> dict[str, Any]:
        """The given options over the registry's size-dependent defaults for `image_size`."""
        out: dict[str, Any] = {}
        if image_size is not None:
            for from_size, values in get_spec(self.name).size_defaults:
                if image_size >= from_size:
                    out |= values
        return out | dict(self.options)


def parse_models(text: str | Sequence[str | ModelRef]) -> list[ModelRef]:
    """A comma-separated list of model references (commas inside parentheses belong to options),
    or a list of them (a config file's `models:`)."""
    if isinstance(text, (list, tuple)):
        return [ModelRef.parse(t) for t in text]
    if not isinstance(text, str):  # e.g. a config file's `models = 5`
        raise AtomddError(f"models={text!r}: expected model references, e.g. 'convnet,mlp' or [convnet, mlp]")
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [ModelRef.parse(p) for p in parts if p.strip()]


def seeded_model(
    seed: int, name: str, channels: int, num_classes: int, image_size: int | tuple[int, int], **options: Any
) -> FeatureModel:
    """`create_model` with its initial weights drawn from `seed` on the CPU generator (identical on
    every device), leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, channels, num_classes, image_size, **options)


from atomdd.models import convnet, cnn, resnet, vit  # noqa: E402,F401,I001  (registers the built-in models)
