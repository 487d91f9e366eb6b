"""The settings of the training, evaluation and coreset commands, as plain dataclasses: validated
in one place (`__post_init__`), filled from a config file and flags (`config.apply_overrides`), and
the source of the CLI's flags (`cli.py` generates one flag per field; `help` metadata is the flag's
help). No torch at import, so `atomdd --help` stays fast. The distillation's settings live in
`distillation/config.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from atomdd.errors import AtomddError, unknown_name

PRECISIONS = ("fp32", "bf16")
DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
CORESET_METHODS = ("random", "herding", "kcenter")
EMBEDDINGS = ("random", "trained")


def dsa_ops(strategy: str) -> tuple[str, ...]:
    """The operations of a DSA strategy ("color_crop_…", or "none"); an unknown one is an error."""
    if strategy in ("", "none"):
        return ()
    ops = tuple(strategy.split("_"))
    bad = [op for op in ops if op not in DSA_OPS]
    if bad:
        raise AtomddError(
            f"unknown augmentation {bad}; choose from {'_'.join(DSA_OPS)} joined by '_', or 'none'"
        )
    return ops


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """How fresh models are trained and tested; the defaults are DM's published settings."""

    epochs: int = 1000
    runs: int = 5  # models trained per architecture (published: 10 or 20)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay: float = 0.1  # lr factor applied from epoch int(epochs · decay_at) on
    decay_at: float = 0.5
    dsa: str = DSA_DEFAULT  # DSA strategy for the training batches, "none" to train without
    # test images per forward pass, summed over the models of a stack: DM's 256; on the CPU measured,
    # 16–64 ran up to 1.5× faster (activations stay in cache), on a GPU larger is faster
    test_batch: int = 256
    seed: int = 0
    device: str = "auto"
    precision: str = field(
        default="fp32", metadata=_help("fp32 (default) | bf16 (where the hardware is fast)")
    )
    # runs together under vmap; None: on CUDA yes, on a CPU no (train.use_batched)
    batched: bool | None = field(
        default=None,
        metadata=_help("train the runs together (default: on CUDA only; slower on CPU, see README)"),
    )
    stack_size: int = 0  # at most this many runs per stack (bounds memory); 0 = all runs at once

    def __post_init__(self) -> None:
        floats = ("lr", "momentum", "weight_decay", "lr_decay", "decay_at")
        if nonfinite := [f"{k}={getattr(self, k)}" for k in floats if not math.isfinite(getattr(self, k))]:
            raise AtomddError(f"invalid evaluation setting(s): {', '.join(nonfinite)} (must be finite)")
        bad = self.problems()
        if bad:
            raise AtomddError(f"invalid evaluation setting(s): {', '.join(bad)}")
        dsa_ops(self.dsa)  # an unknown operation is an error now, not mid-run

    def problems(self) -> list[str]:
        positive = ("epochs", "runs", "batch_size", "test_batch")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("lr", "lr_decay") if not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("momentum", "weight_decay") if getattr(self, k) < 0]
        if not 0 <= self.decay_at <= 1:
            bad.append(f"decay_at={self.decay_at} (a fraction of the epochs, 0–1)")
        if self.stack_size < 0:
            bad.append(f"stack_size={self.stack_size} (0 means all runs in one stack)")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        return bad


@dataclass(frozen=True)
class EvalPreset:
    """The evaluation a published code runs: settings over `EvalConfig`'s defaults, and its model."""

    settings: dict[str, Any]
    models: str
    help: str


# Each published code's evaluation as it runs (docs/reproduce.md). Both train 10 models; the
# DataDAM code's ConvNet has batch norm (its get_network forces it), tested in eval mode.
EVAL_PRESETS = {
    "datadam-code": EvalPreset(
        {"epochs": 1800, "batch_size": 64, "runs": 10},
        "convnet(norm=batchnorm)",
        "the published DataDAM code's: batch-norm ConvNet, 1 800 epochs, batch 64, 10 models",
    ),
    "dm-code": EvalPreset(
        {"epochs": 1000, "batch_size": 256, "runs": 10},
        "convnet",
        "the published DM code's: instance-norm ConvNet, 1 000 epochs, batch 256, 10 models",
    ),
}


def eval_preset(name: str) -> EvalPreset:
    try:
        return EVAL_PRESETS[name]
    except KeyError:
        raise unknown_name("evaluation preset", name, list(EVAL_PRESETS)) from None


@dataclass(frozen=True)
class EvalConfig(TrainConfig):
    """Every knob of the protocol: how the models train (`TrainConfig`), and what is reported."""

    # a published code's evaluation (EVAL_PRESETS): its settings come before the config file's and
    # the flags, and its model is the default; recorded in eval.json with the rest
    preset: str = field(
        default="", metadata=_help(f"a published code's evaluation: {' | '.join(EVAL_PRESETS)}")
    )

    # also test on the first N test images alone (0: no): a test set only partly exact, as the
    # CIFAR-10 copy this project is checked on, reports its exact part beside the whole
    test_limit: int = field(
        default=0,
        metadata=_help(
            "also report accuracy on the first N test images (e.g. 1000: CIFAR-10's exact part here)"
        ),
    )

    @classmethod
    def from_preset(cls, name: str = "", **overrides: Any) -> EvalConfig:
        """The evaluation preset `name` (none: the defaults), then `overrides`."""
        return cls(**(eval_preset(name).settings if name else {}) | {"preset": name} | overrides)

    def problems(self) -> list[str]:
        bad = super().problems()
        if self.preset:
            eval_preset(self.preset)  # an unknown name lists the valid ones
        if self.test_limit < 0:
            bad.append(f"test_limit={self.test_limit} (0 means no separate first-N accuracy)")
        return bad


@dataclass(frozen=True)
class CoresetConfig:
    """How a coreset is selected (see `coreset.py`)."""

    method: str = field(default="random", metadata=_help(" | ".join(CORESET_METHODS)))
    seed: int = 0
    embed: str = field(
        default="random", metadata=_help("herding/k-center feature space: random (ConvNet at init) | trained")
    )
    embed_model: str = field(
        default="convnet", metadata=_help("the embedding network, a model reference: convnet(depth=2)")
    )
    embed_epochs: int = field(default=10, metadata=_help("training epochs of a trained embedding network"))
    zca: bool = field(default=False, metadata=_help("store the images ZCA-whitened (as CIFAR runs use)"))
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in CORESET_METHODS:
            raise AtomddError(
                f"unknown coreset method {self.method!r}; choose one of {', '.join(CORESET_METHODS)}"
            )
        if self.embed not in EMBEDDINGS:
            raise AtomddError(f"embedding network {self.embed!r}: choose one of {', '.join(EMBEDDINGS)}")
        if self.embed_epochs < 1:
            raise AtomddError(
                f"embed_epochs={self.embed_epochs}: train the embedding network at least 1 epoch"
            )


@dataclass(frozen=True)
class MatchConfig:
    spatial: float = 1.0  # w_s
    channel: float = 1.0  # w_c
    embedding: float = 0.01  # λ
    p_spatial: float = 4.0
    p_channel: float = 4.0
    layers: str = "all-but-last"  # "all", "all-but-last", or comma-separated block indices ("0,1")
    scale: float = 100.0  # common factor; behaves like the image learning rate

    def __post_init__(self) -> None:
        floats = ("spatial", "channel", "embedding", "p_spatial", "p_channel", "scale")
        if bad := [f"{k}={getattr(self, k)}" for k in floats if not math.isfinite(getattr(self, k))]:
            raise AtomddError(f"{', '.join(bad)}: settings must be finite numbers")
        if min(self.spatial, self.channel, self.embedding) < 0 or self.scale <= 0:
            raise AtomddError("matching weights must be ≥ 0 and scale > 0")
        if self.spatial == self.channel == self.embedding == 0:
            raise AtomddError("all matching weights are zero: nothing to match")
        if self.p_spatial <= 0 or self.p_channel <= 0:
            raise AtomddError("attention powers p_spatial and p_channel must be > 0")
        self.layer_indices(8)  # validates the syntax early

    def layer_indices(self, num_blocks: int) -> list[int]:
        if self.layers == "all":
            return list(range(num_blocks))
        if self.layers == "all-but-last":
            return list(range(max(num_blocks - 1, 0)))
        try:
            idx = [int(s) for s in str(self.layers).split(",") if s.strip()]
        except ValueError:
            raise AtomddError(
                f"layers={self.layers!r}: use 'all', 'all-but-last' or indices like '0,1'"
            ) from None
        if any(i < -num_blocks or i >= num_blocks for i in idx):
            raise AtomddError(f"layers={self.layers!r}: the model has blocks 0..{num_blocks - 1}")
        return idx

    def to_dict(self) -> dict:
        return asdict(self)
