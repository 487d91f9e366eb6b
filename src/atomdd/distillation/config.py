"""The settings of a distillation run and the published presets. No torch at import: the CLI
builds its flags from `DistillConfig` without loading it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomdd.config import apply_overrides, load_config_file
from atomdd.errors import AtomddError
from atomdd.io import derive_seed
from atomdd.methods import get_method
from atomdd.settings import DSA_DEFAULT, MatchConfig, dsa_ops

if TYPE_CHECKING:
    from atomdd.models import ModelRef

BN_BATCHES = ("class", "all")
# Keys that may change between a checkpoint and its resumption without changing the result.
RESUMABLE = {"iterations", "checkpoint_every", "log_every", "data_root", "download", "device", "chunk_images"}
# ConvNet's options as flat keys (config files, flags, run.json before `model` took options): they
# fold into the backbone's model reference, `width=16` → `convnet(width=16)`
MODEL_KEYS = ("depth", "width", "norm", "act", "pool")


@dataclass(frozen=True)
class RunConfig:
    """How a distillation executes: none of it changes what it computes, but `fused` and `precision`
    change its rounding."""

    fused: bool = True  # all classes in one pass; False = one class per pass (the published loop)
    chunk_images: int = 0  # images per forward pass; 0 = auto (256 on CPU: cache-friendly, 8192 on GPU)
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; falls back to fp32 without fast bf16)
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    data_root: str | None = None
    download: bool = False


@dataclass(frozen=True)
class DistillConfig:
    dataset: str = "digits"
    ipc: int = 10
    method: str = "atom"
    iterations: int = 8000
    seed: int = 0
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64  # real images per class per step
    init: str = "real"  # "real" | "noise"
    zca: bool = False
    # whiten the initial synthetic images once more, with a ZCA (same ε) fitted on them alone: what
    # the published DataDAM code does with --zca (docs/reproduce.md); needs zca
    zca_refit: bool = False
    # after each step, project the pixels back onto valid images ([0, 1] before normalisation/ZCA)
    clip: bool = False
    dsa: str = DSA_DEFAULT  # or "none"
    # the backbone: a model reference, e.g. "convnet", "convnet(depth=4)", "resnet18(norm=batchnorm)"
    model: str = "convnet"
    # with a batch-norm backbone, the images one forward call normalises together: "class" (each
    # class's real images in one call, its synthetic images in another) or "all" (every class's real
    # images in one call, every synthetic image in another: the published DataDAM code; one process)
    bn_batch: str = "class"
    match: MatchConfig = field(default_factory=MatchConfig)  # the loss (defaults: ATOM's)
    run: RunConfig = field(default_factory=RunConfig)

    def model_ref(self) -> ModelRef:
        """`model` as a reference: a name, or a name with options (`convnet(depth=2,pool=maxpool)`)."""
        from atomdd.models import ModelRef

        return ModelRef.parse(self.model)

    def model_options(self) -> dict[str, Any]:
        return dict(self.model_ref().options)

    def flat(self) -> dict[str, Any]:
        """Every setting under its own name, sections merged (names are unique across them)."""
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _SECTIONS}
        return top | {
            k: v for section in _SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """A config from its nested dict (`dataclasses.asdict`), or from the flat one run.json held
        before the sections (its depth … pool fold into `model`)."""
        flat = dict(values)
        for section in _SECTIONS:
            if isinstance(flat.get(section), dict):
                flat |= flat.pop(section)
        legacy = {k: flat.pop(k) for k in MODEL_KEYS if k in flat}
        if legacy:
            from atomdd.models import ModelRef, get_spec

            defaults = get_spec(ModelRef.parse(flat.get("model", "convnet")).name).options
            legacy = {k: v for k, v in legacy.items() if k in defaults and defaults[k] != v}
            flat["model"] = _with_options(flat.get("model", "convnet"), legacy)
        return override(cls(), flat)


_SECTIONS = ("match", "run")


def flat_fields() -> list[dataclasses.Field]:
    """The fields of `DistillConfig` with its sections' fields in place of the sections: one per
    flag (the CLI's `--lr-img`, `--p-spatial`, `--checkpoint-every`, ...)."""
    out = []
    for f in dataclasses.fields(DistillConfig):
        if f.name in _SECTIONS:
            out += dataclasses.fields({"match": MatchConfig, "run": RunConfig}[f.name])
        else:
            out.append(f)
    return out


def _with_options(model: str, options: dict[str, Any]) -> str:
    """`model` with `options` over the ones it names (a canonical model reference)."""
    from atomdd.models import ModelRef

    ref = ModelRef.parse(model)
    return str(ModelRef(ref.name, tuple((dict(ref.options) | options).items())))


def override(cfg: DistillConfig, values: dict[str, Any], what: str = "config key") -> DistillConfig:
    """`cfg` with flat `values` applied, each to its section (the top level, `match`, `run`), and
    ConvNet's flat options (depth … pool) folded into `model`; an unknown key names the valid ones."""
    sections = {s: {f.name for f in dataclasses.fields(getattr(cfg, s))} for s in _SECTIONS}
    top = {f.name for f in dataclasses.fields(cfg)} - set(_SECTIONS)
    valid = [*sorted(top), *MODEL_KEYS, *(k for s in _SECTIONS for k in sorted(sections[s]))]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise AtomddError(f"unknown {what}(s) {unknown}; valid: {', '.join(valid)}")
    cfg = apply_overrides(cfg, {k: v for k, v in values.items() if k in top}, what)
    for s in _SECTIONS:
        mine = {k: v for k, v in values.items() if k in sections[s]}
        if mine:
            cfg = dataclasses.replace(cfg, **{s: apply_overrides(getattr(cfg, s), mine, what)})
    folded = {k: v for k, v in values.items() if k in MODEL_KEYS}
    if folded:
        cfg = dataclasses.replace(cfg, model=_with_options(cfg.model, folded))
    return cfg


# Published settings (DataDAM's table; ATOM follows DM/DataDAM): (ipc → image lr), real batch,
# ZCA for CIFAR, depth 4 and twice λ at 64×64.
_HIGH_RES = {"tinyimagenet"}
_ZCA = {"cifar10", "cifar100"}
# ATOM's λ where our ablation chose another value than DataDAM's 0.01 (docs/accuracy-mnist.md)
ATOM_LAMBDA = {"mnist": 0.1}


def preset(dataset: str, ipc: int, method: str) -> dict[str, Any]:
    """The published hyperparameters for a dataset × IPC × method, as (flat) config overrides."""
    m = get_method(method)
    values: dict[str, Any] = {
        "dataset": dataset,
        "ipc": ipc,
        "method": method,
        "lr_img": 1.0 if ipc <= 50 else 10.0,
        "batch_real": m.batch_real,
        "zca": dataset in _ZCA,
        **({"model": "convnet(depth=4)"} if dataset in _HIGH_RES else {}),
        **{f.name: getattr(m.match, f.name) for f in dataclasses.fields(m.match)},
    }
    if method == "atom" and dataset in ATOM_LAMBDA:
        values["embedding"] = ATOM_LAMBDA[dataset]
    if dataset in _HIGH_RES and m.match.spatial + m.match.channel > 0:
        values["embedding"] = 2 * m.match.embedding  # DataDAM doubles λ at 64×64 (0.01 → 0.02)
    values |= m.settings
    values["zca_refit"] = values.get("zca_refit", False) and values["zca"]  # refit where it whitens
    return values


def make_config(
    dataset: str | None = None,
    ipc: int | None = None,
    method: str | None = None,
    config_file: str | Path | None = None,
    **flags: Any,
) -> DistillConfig:
    """The preset for (dataset, ipc, method), then the config file, then `flags`; an argument given
    (not None) beats the file, and the file beats the defaults (digits, 10, atom)."""
    file_values = load_config_file(config_file) if config_file else {}
    dataset = dataset or file_values.pop("dataset", None) or "digits"
    ipc = ipc if ipc is not None else file_values.pop("ipc", 10)
    if not isinstance(ipc, int) or isinstance(ipc, bool):
        raise AtomddError(f"ipc={ipc!r}: expected a whole number of images per class")
    method = method or file_values.pop("method", None) or "atom"
    for key, value in (("dataset", dataset), ("method", method)):
        if not isinstance(value, str):
            raise AtomddError(f"{key}={value!r}: expected a name")
    for key in ("dataset", "ipc", "method"):
        file_values.pop(key, None)
    cfg = override(DistillConfig(), preset(dataset, ipc, method))
    cfg = override(cfg, file_values)
    cfg = override(cfg, {k: v for k, v in flags.items() if v is not None})
    validate(cfg)
    return dataclasses.replace(cfg, model=str(cfg.model_ref()))  # one spelling per model


def validate(cfg: DistillConfig) -> None:
    numbers = {k: v for k, v in cfg.flat().items() if isinstance(v, float)}
    if bad := [f"{k}={v}" for k, v in numbers.items() if not math.isfinite(v)]:
        raise AtomddError(f"{', '.join(bad)}: settings must be finite numbers")
    if cfg.ipc < 1:
        raise AtomddError(f"ipc must be ≥ 1 (images per class), got {cfg.ipc}")
    if cfg.iterations < 0:
        raise AtomddError("iterations must be ≥ 0")
    if cfg.init not in ("real", "noise"):
        raise AtomddError(f"init must be 'real' or 'noise', got {cfg.init!r}")
    if cfg.lr_img <= 0 or cfg.batch_real < 1 or cfg.run.checkpoint_every < 1 or cfg.run.log_every < 1:
        raise AtomddError("lr_img must be > 0, and batch_real, checkpoint_every, log_every ≥ 1")
    if cfg.run.chunk_images < 0:
        raise AtomddError("chunk_images must be ≥ 0 (0 = automatic)")
    if cfg.bn_batch not in BN_BATCHES:
        raise AtomddError(f"bn_batch={cfg.bn_batch!r}: choose one of {', '.join(BN_BATCHES)}")
    if cfg.zca_refit and not cfg.zca:
        raise AtomddError("zca_refit whitens the initial images again, so it needs zca=true")
    cfg.model_ref()
    dsa_ops(cfg.dsa)


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed for one purpose at one step, independent of everything else that ran."""
    return derive_seed(seed, step, purpose)
