"""The settings of the training, evaluation and coreset commands and of the matching loss, as
plain dataclasses: each lists what is wrong with it in `problems()`, and `__post_init__` refuses a
value with any (`errors.refuse`: every problem named at once), the one style every settings class
follows (`DistillConfig`, `NasSettings` too). They are filled from a config file and flags
(`config.build`) and are the source of the CLI's flags (`flags.py` generates one flag per field;
`help` metadata is the flag's help). No torch at import, so `atomdd --help` stays fast. The
distillation's settings live in `distillation/config.py`, a search's in `nas.py`.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, field
from typing import Any, ClassVar

from atomdd.distances import DEFAULT as DISTANCE
from atomdd.distances import DISTANCES
from atomdd.errors import AtomddError, refuse, renamed, unknown_name

PRECISIONS = ("fp32", "bf16")
DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
CORESET_METHODS = ("random", "herding", "kcenter")
EMBEDDINGS = ("random", "trained")


def dsa_problem(strategy: str) -> str | None:
    """What is wrong with a DSA strategy ("color_crop_…", or "none"), or None."""
    bad = [op for op in strategy.split("_") if op not in DSA_OPS] if strategy not in ("", "none") else []
    if bad:
        return f"unknown augmentation {bad}; choose from {'_'.join(DSA_OPS)} joined by '_', or 'none'"
    return None


def dsa_ops(strategy: str) -> tuple[str, ...]:
    """The operations of a DSA strategy ("color_crop_…", or "none"); an unknown one is an error."""
    if problem := dsa_problem(strategy):
        raise AtomddError(problem)
    return () if strategy in ("", "none") else tuple(strategy.split("_"))


def not_finite(obj: Any, names: tuple[str, ...]) -> list[str]:
    """The problems of the settings `names` of `obj` that are not finite numbers."""
    return [f"{k}={getattr(obj, k)} (must be finite)" for k in names if not math.isfinite(getattr(obj, k))]


def help_meta(text: str) -> dict[str, Any]:
    """A field's metadata: `text` is its flag's help (`flags.add_config_flags`), the one home of
    what the setting means; the flag's help adds the value it takes now."""
    return {"help": text}


def helped(default: Any, text: str, **kwargs: Any) -> Any:
    """A dataclass field with its default and its flag's help (`help_meta`)."""
    return field(default=default, metadata=help_meta(text), **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """How fresh models are trained and tested; the defaults are DM's published settings."""

    # settings renamed: the old name (a config key, a flag) still works, with a warning
    RENAMED: ClassVar[dict[str, str]] = {"runs": "repeats"}

    epochs: int = helped(1000, "training epochs of each model (the published protocol: 1000)")
    # fresh models trained per architecture, each from its own seeds (published: 10 or 20)
    repeats: int = helped(5, "models trained per architecture, each from its own seeds (published: 10–20)")
    lr: float = helped(0.01, "SGD learning rate of the models")
    momentum: float = helped(0.9, "SGD momentum of the models")
    weight_decay: float = helped(5e-4, "SGD weight decay of the models")
    batch_size: int = helped(256, "training batch (a set of 100 images at 256: one SGD step an epoch)")
    lr_decay: float = helped(0.1, "the learning rate's factor from epoch epochs × decay_at on")
    decay_at: float = helped(0.5, "when the learning rate drops, as a fraction of the epochs")
    dsa: str = helped(DSA_DEFAULT, "augmentation of every training batch: ops joined by _, or none")
    # test images per forward pass, summed over the models of a stack: DM's 256; on the CPU measured,
    # 16–64 ran up to 1.5× faster (activations stay in cache), on a GPU larger is faster
    test_batch: int = helped(256, "test images per forward pass (speed only; 16–64 faster on a CPU)")
    seed: int = helped(0, "the models' seed: repeat r draws its weights and batches from (seed, r)")
    device: str = helped("auto", "auto (CUDA where there is one) | cpu | cuda | cuda:N")
    precision: str = helped("fp32", "fp32 | bf16 (autocast, where the hardware is fast at it)")
    # the repeats together under vmap; None: on CUDA yes, on a CPU no (train.use_batched)
    batched: bool | None = helped(
        None,
        "train the repeats together under vmap (unset: on CUDA only; slower on a CPU, docs/performance.md)",
    )
    stack_size: int = helped(0, "at most this many repeats trained together (bounds memory); 0: all")
    # CutMix (Yun et al.; DD-Ranking's evaluation option): each training batch, with this
    # probability, gets a box of its images pasted from a shuffled copy, labels mixed by area (β 1)
    cutmix: float = helped(0.0, "CutMix probability per training batch (β 1); 0: none")
    runs: InitVar[int | None] = None  # the old name of `repeats`

    def __post_init__(self, runs: int | None = None) -> None:
        if runs is not None:
            renamed("runs", "repeats")
            object.__setattr__(self, "repeats", runs)
        refuse("evaluation setting(s)", self.problems())

    def problems(self) -> list[str]:
        floats = ("lr", "momentum", "weight_decay", "lr_decay", "decay_at", "cutmix")
        if nonfinite := not_finite(self, floats):
            return nonfinite
        positive = ("epochs", "repeats", "batch_size", "test_batch")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("lr", "lr_decay") if not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("momentum", "weight_decay") if getattr(self, k) < 0]
        if not 0 <= self.decay_at <= 1:
            bad.append(f"decay_at={self.decay_at} (a fraction of the epochs, 0–1)")
        if self.stack_size < 0:
            bad.append(f"stack_size={self.stack_size} (0 means all repeats in one stack)")
        if not 0 <= self.cutmix <= 1:
            bad.append(f"cutmix={self.cutmix} (a probability, 0–1)")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        if problem := dsa_problem(self.dsa):  # an unknown operation is an error now, not mid-run
            bad.append(problem)
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
        {"epochs": 1800, "batch_size": 64, "repeats": 10},
        "convnet(norm=batchnorm)",
        "the published DataDAM code's: batch-norm ConvNet, 1 800 epochs, batch 64, 10 models",
    ),
    "dm-code": EvalPreset(
        {"epochs": 1000, "batch_size": 256, "repeats": 10},
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
    preset: str = helped(
        "", f"a published code's evaluation, under the flags: {' | '.join(EVAL_PRESETS)} (`atomdd methods`)"
    )

    # also test on the first N test images alone (0: no): a test set only partly exact, as the
    # CIFAR-10 copy this project is checked on, reports its exact part beside the whole
    test_limit: int = helped(0, "also report the accuracy on the first N test images (0: no)")

    # soft labels from a trained network (DD-Ranking's evaluation option): a pool folder (`atomdd
    # pool`) whose first member's last snapshot labels each augmented training batch; the models
    # train on the KL divergence to its softened outputs instead of the hard labels
    teacher: str = helped("", "a pool folder: its first network's soft labels (KL) replace labels")
    teacher_temperature: float = helped(1.0, "the teacher's softmax temperature")

    @classmethod
    def from_preset(cls, name: str = "", **overrides: Any) -> EvalConfig:
        """The evaluation preset `name` (none: the defaults), then `overrides`."""
        return cls(**(eval_preset(name).settings if name else {}) | {"preset": name} | overrides)

    def problems(self) -> list[str]:
        bad = super().problems()
        if self.preset and self.preset not in EVAL_PRESETS:
            bad.append(str(unknown_name("evaluation preset", self.preset, list(EVAL_PRESETS))))
        if self.test_limit < 0:
            bad.append(f"test_limit={self.test_limit} (0 means no separate first-N accuracy)")
        if not (math.isfinite(self.teacher_temperature) and self.teacher_temperature > 0):
            bad.append(f"teacher_temperature={self.teacher_temperature} (must be > 0)")
        elif self.teacher_temperature != 1.0 and not self.teacher:
            bad.append("teacher_temperature softens a teacher's outputs: it needs teacher=POOL_FOLDER")
        return bad


@dataclass(frozen=True)
class CoresetConfig:
    """How a coreset is selected (see `coreset.py`)."""

    method: str = helped("random", " | ".join(CORESET_METHODS))
    seed: int = helped(0, "the random pick's seed, and the embedding network's")
    embed: str = helped("random", "herding/k-center feature space: random (ConvNet at init) | trained")
    embed_model: str = helped("convnet", "the embedding network, a model reference: convnet(depth=2)")
    embed_epochs: int = helped(10, "training epochs of a trained embedding network")
    zca: bool = helped(False, "store the images ZCA-whitened (as CIFAR runs use)")
    device: str = helped("auto", "auto (CUDA where there is one) | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        refuse("coreset setting(s)", self.problems())

    def problems(self) -> list[str]:
        bad = []
        if self.method not in CORESET_METHODS:
            bad.append(f"unknown coreset method {self.method!r}; choose one of {', '.join(CORESET_METHODS)}")
        if self.embed not in EMBEDDINGS:
            bad.append(f"embedding network {self.embed!r}: choose one of {', '.join(EMBEDDINGS)}")
        if self.embed_epochs < 1:
            bad.append(f"embed_epochs={self.embed_epochs}: train the embedding network at least 1 epoch")
        return bad


# a distillation's `pool_dir` that names the dataset's default pool folder (`pool.default_folder`)
POOL_DEFAULT = "default"


@dataclass(frozen=True)
class PoolSettings:
    """A pool of trained networks (`pool.py`, `atomdd pool`): what is trained, how long, and which
    epochs are kept. Members train as the evaluation trains its models (`TrainConfig`'s momentum,
    weight decay, lr drop at half the epochs, DSA), on the whole real train set. The defaults
    are the affordable form of DSDM's 10 × 20 epochs and DANCE's 20 × 60 on two CPU cores."""

    dataset: str = helped("cifar10", "its real train images, a registered dataset")
    model: str = helped("convnet", "the architecture, a model reference")
    # None: as the dataset's distillation preset (ZCA for CIFAR), so a run with defaults can use it
    zca: bool | None = helped(None, "train on ZCA-whitened images (unset: as the dataset's preset)")
    members: int = helped(3, "networks in the pool")
    epochs: int = helped(10, "training epochs of each network")
    snapshot_every: int = helped(2, "keep the weights every N epochs, and at the last")
    lr: float = helped(0.01, "SGD learning rate of the networks")
    batch_size: int = helped(256, "training batch")
    dsa: str = helped(DSA_DEFAULT, "augmentation of every training batch: ops joined by _, or none")
    seed: int = helped(0, "member m draws its weights and batches from (seed, m)")
    device: str = helped("auto", "auto (CUDA where there is one) | cpu | cuda | cuda:N")
    data_root: str | None = helped(None, "folder holding MNIST/, cifar-10-batches-py/, … (or $ATOMDD_DATA)")

    def __post_init__(self) -> None:
        refuse("pool setting(s)", self.problems())

    def problems(self) -> list[str]:
        if bad := not_finite(self, ("lr",)):
            return bad
        positive = ("members", "epochs", "snapshot_every", "batch_size")
        bad = [f"{k}={getattr(self, k)} (at least 1)" for k in positive if getattr(self, k) < 1]
        if self.lr <= 0:
            bad.append(f"lr={self.lr} (must be > 0)")
        if problem := dsa_problem(self.dsa):
            bad.append(problem)
        return bad

    def snapshots(self) -> list[int]:
        """The epochs whose weights are kept besides epoch 0: every `snapshot_every`, and the last."""
        return sorted({*range(self.snapshot_every, self.epochs + 1, self.snapshot_every), self.epochs})

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            repeats=self.members,
            lr=self.lr,
            batch_size=self.batch_size,
            dsa=self.dsa,
            seed=self.seed,
            device=self.device,
        )


@dataclass(frozen=True)
class MatchConfig:
    """The matching loss (`matching.py`): the weights of its terms, the attention powers, the
    blocks matched, the distance between class means and a common factor."""

    spatial: float = helped(1.0, "w_s: the weight of the spatial attention term")
    channel: float = helped(1.0, "w_c: the weight of the channel attention term")
    embedding: float = helped(0.01, "λ: the weight of the final embedding's term")
    p_spatial: float = helped(4.0, "the power of the spatial attention maps")
    p_channel: float = helped(4.0, "the power of the channel attention maps")
    layers: str = helped("all-but-last", "the blocks matched: all | all-but-last | indices such as 0,1")
    scale: float = helped(100.0, "a common factor of the loss (behaves like the image learning rate)")
    distance: str = helped(
        DISTANCE,
        f"of the embedding term, real against synthetic samples: {' | '.join(DISTANCES)} (docs/beyond.md)",
    )
    # calibration (IDM, DANCE, NCFM): + calib · Σ_k mean cross-entropy of class k's augmented
    # synthetic images under the step's network (its classifier); not multiplied by `scale`
    calib: float = helped(
        0.0, "weight of the synthetic images' cross-entropy under the step's network (needs pool_dir)"
    )

    def __post_init__(self) -> None:
        refuse("matching setting(s)", self.problems())

    def problems(self) -> list[str]:
        floats = ("spatial", "channel", "embedding", "p_spatial", "p_channel", "scale", "calib")
        if bad := not_finite(self, floats):
            return bad
        if min(self.spatial, self.channel, self.embedding, self.calib) < 0 or self.scale <= 0:
            bad.append("matching weights must be ≥ 0 and scale > 0")
        if self.spatial == self.channel == self.embedding == 0:
            bad.append("all matching weights are zero: nothing to match")
        if self.p_spatial <= 0 or self.p_channel <= 0:
            bad.append("attention powers p_spatial and p_channel must be > 0")
        if self.distance not in DISTANCES:
            bad.append(str(unknown_name("distance", self.distance, list(DISTANCES))))
        try:
            self.layer_indices(8)  # the syntax, early
        except AtomddError as e:
            bad.append(str(e))
        return bad

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
