"""The settings of a distillation run and the published presets. No torch at import: the CLI
builds its flags from `DistillConfig` without loading it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomdd.config import coerce, field_defaults, load_config_file
from atomdd.errors import AtomddError, refuse
from atomdd.io import derive_seed
from atomdd.methods import get_method
from atomdd.settings import (
    DSA_DEFAULT,
    POOL_DEFAULT,
    PRECISIONS,
    MatchConfig,
    dsa_problem,
    helped,
    not_finite,
)

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

    fused: bool = helped(True, "all classes in one forward pass (--no-fused: one class a pass, as published)")
    chunk_images: int = helped(0, "images per forward pass; 0: automatic (256 on a CPU, 8192 on a GPU)")
    precision: str = helped("fp32", "fp32 | bf16 (autocast; fp32 where bf16 is not fast)")
    device: str = helped("auto", "auto (CUDA where there is one) | cpu | cuda | cuda:N")
    checkpoint_every: int = helped(500, "steps between checkpoints (a stop or a crash resumes from one)")
    log_every: int = helped(10, "steps between two rows of metrics.jsonl")
    data_root: str | None = helped(None, "folder holding MNIST/, cifar-10-batches-py/, … (or $ATOMDD_DATA)")
    download: bool = helped(False, "fetch a missing dataset (checksum-verified)")

    def __post_init__(self) -> None:
        refuse("run setting(s)", self.problems())

    def problems(self) -> list[str]:
        every = ("checkpoint_every", "log_every")
        bad = [f"{k}={getattr(self, k)} (must be ≥ 1)" for k in every if getattr(self, k) < 1]
        if self.chunk_images < 0:
            bad.append("chunk_images must be ≥ 0 (0 = automatic)")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        return bad


@dataclass(frozen=True)
class DistillConfig:
    dataset: str = helped("digits", "a registered dataset (`atomdd datasets` lists them)")
    ipc: int = helped(10, "synthetic images per class")
    method: str = helped("atom", "a method preset (`atomdd methods` says what each sets)")
    iterations: int = helped(8000, "distillation steps (the published tables: 8000)")
    seed: int = helped(0, "the run's seed: the initial images, each step's network and augmentation")
    lr_img: float = helped(1.0, "the synthetic pixels' SGD learning rate")
    momentum: float = helped(0.5, "the synthetic pixels' SGD momentum")
    batch_real: int = helped(64, "real images per class per step")
    init: str = helped("real", "the initial synthetic images: real (random real ones) | noise")
    zca: bool = helped(False, "ZCA-whiten the images (the published CIFAR protocol)")
    # what the published DataDAM code does with --zca (docs/reproduce.md)
    zca_refit: bool = helped(
        False, "whiten the initial images once more, by a ZCA fitted on them (needs zca)"
    )
    clip: bool = helped(False, "after each step, project the pixels back onto valid images ([0, 1])")
    dsa: str = helped(DSA_DEFAULT, "augmentation of real and synthetic batches: ops joined by _, or none")
    model: str = helped(
        "convnet", "the backbone, a model reference: convnet(depth=4), resnet18(norm=batchnorm)"
    )
    # with a batch-norm backbone, "class": each class's real images in one call, its synthetic
    # images in another; "all": every class's real images in one call, every synthetic image in
    # another (the published DataDAM code; one process)
    bn_batch: str = helped("class", "batch-norm backbones: what one forward call normalises, class | all")
    # factor images (IDC, IDM, DANCE, DSDM, NCFM): each stored image holds factor×factor tiles,
    # each upsampled to a whole image when decoded (`sets.decode`), so IPC n trains on n·factor²
    factor: int = helped(1, "tiles per side of each stored image (IDC's factor; 1: none)")
    # the step's network from a pool of trained networks (DSDM, DANCE, NCFM) instead of a random one
    # (named pool_dir: `pool` is ConvNet's pooling, a flat model key)
    pool_dir: str = helped(
        "", f"a pool folder (`atomdd pool`), or '{POOL_DEFAULT}': DATA_ROOT/pools/<dataset>-<model>[-zca]"
    )
    pool_interp: bool = helped(
        False, "each step's pool network mixed with its initial weights, l ~ U(0, 1) (DANCE)"
    )
    match: MatchConfig = field(default_factory=MatchConfig)  # the loss (defaults: ATOM's)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        refuse("distillation setting(s)", self.problems())

    def problems(self) -> list[str]:
        """What is wrong with the top-level settings (the sections check their own)."""
        if bad := not_finite(self, ("lr_img", "momentum")):
            return bad
        if self.ipc < 1:
            bad.append(f"ipc must be ≥ 1 (images per class), got {self.ipc}")
        if self.iterations < 0:
            bad.append("iterations must be ≥ 0")
        if self.init not in ("real", "noise"):
            bad.append(f"init must be 'real' or 'noise', got {self.init!r}")
        if self.lr_img <= 0 or self.batch_real < 1:
            bad.append("lr_img must be > 0, and batch_real ≥ 1")
        if self.bn_batch not in BN_BATCHES:
            bad.append(f"bn_batch={self.bn_batch!r}: choose one of {', '.join(BN_BATCHES)}")
        if self.zca_refit and not self.zca:
            bad.append("zca_refit whitens the initial images again, so it needs zca=true")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            bad.append(f"factor={self.factor!r}: a whole number ≥ 1")
        if not self.pool_dir and (self.pool_interp or self.match.calib > 0):
            wanted = "pool_interp" if self.pool_interp else f"calib={self.match.calib}"
            bad.append(
                f"{wanted} needs a pool of trained networks (a random network's outputs mean nothing): "
                f"give pool_dir=FOLDER or pool_dir={POOL_DEFAULT} (build one with `atomdd pool`)"
            )
        if problem := dsa_problem(self.dsa):
            bad.append(problem)
        try:
            self.model_ref()  # a known model with known options
        except AtomddError as e:
            bad.append(str(e))
        return bad

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
        return layered(flat)


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


def layered(*layers: dict[str, Any], what: str = "config key") -> DistillConfig:
    """A config from flat settings, each layer over the ones before (a preset, a config file,
    flags): each key goes to its section (the top level, `match`, `run`), ConvNet's flat options
    (depth … pool) fold into the `model` of the layers so far, and an unknown key names the valid
    ones. Made and checked once, from the last layer: no half-made config is judged."""
    sections = {"match": MatchConfig, "run": RunConfig}
    names = {s: {f.name for f in dataclasses.fields(c)} for s, c in sections.items()}
    top = {f.name for f in dataclasses.fields(DistillConfig)} - set(_SECTIONS)
    valid = [*sorted(top), *MODEL_KEYS, *(k for s in _SECTIONS for k in sorted(names[s]))]
    flat: dict[str, Any] = {}
    for values in layers:
        if unknown := sorted(set(values) - set(valid)):
            raise AtomddError(f"unknown {what}(s) {unknown}; valid: {', '.join(valid)}")
        flat |= {k: v for k, v in values.items() if k not in MODEL_KEYS}
        if folded := {k: v for k, v in values.items() if k in MODEL_KEYS}:
            flat["model"] = _with_options(flat.get("model", DistillConfig.model), folded)
    parts = {
        s: coerce(c, {k: v for k, v in flat.items() if k in names[s]}, what) for s, c in sections.items()
    }
    mine = coerce(DistillConfig, {k: v for k, v in flat.items() if k in top}, what)
    return DistillConfig(**mine, **{s: c(**parts[s]) for s, c in sections.items()})


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
    given = {k: v for k, v in flags.items() if v is not None}
    cfg = layered(preset(dataset, ipc, method), file_values, given)
    return dataclasses.replace(cfg, model=str(cfg.model_ref()))  # one spelling per model


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    """A method spec, `name` or `name[key=value,...]` (settings over the preset, for ablations:
    `atomdd grid --methods`, a report's row labels) → (name, settings)."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if not m:
        raise AtomddError(f"bad method spec {spec!r}; e.g. atom or atom[p_spatial=2,p_channel=6]")
    pairs = [kv for kv in (m.group(2) or "").split(",") if kv]
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise AtomddError(f"bad method spec {spec!r}: overrides are key=value, got {bad}")
    return m.group(1), dict(kv.split("=", 1) for kv in pairs)


def method_spec(name: str, settings: dict[str, Any]) -> str:
    """The method spec `parse_method` reads back: `atom`, or `atom[embedding=0.1,clip=true]`."""
    if not settings:
        return name
    shown = (f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items())
    return f"{name}[{','.join(shown)}]"


# ConvNet's options as run.json held them before `model` took options (flat MODEL_KEYS), and their
# defaults then: what a run of that format did not change
_LEGACY_CONVNET = {"depth": 3, "width": 128, "norm": "instancenorm", "act": "relu", "pool": "avgpool"}
# what a method spec does not name: the run's identity and budget, and how it executed (which
# changes no number beyond rounding), where its data was
_NOT_SPEC = {
    "dataset",
    "ipc",
    "method",
    "seed",
    "iterations",
    *(f.name for f in dataclasses.fields(RunConfig)),
}


def _model_options(model: str, flat: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A backbone's name and the options it sets beyond ConvNet's defaults, from a model reference
    and flat option keys. Plain text, not `models.ModelRef` (which loads torch; a report needs none)."""
    m = re.fullmatch(r"\s*([\w-]+)\s*(?:\((.*)\))?\s*", str(model))
    name, inner = (m.group(1), m.group(2) or "") if m else (str(model), "")
    options = dict(kv.split("=", 1) for kv in inner.split(",") if "=" in kv)
    options = {k.strip(): v.strip() for k, v in options.items()} | {k: str(v) for k, v in flat.items()}
    if name == "convnet":
        options = {k: v for k, v in options.items() if str(_LEGACY_CONVNET.get(k)) != v}
    return name, options


def recorded_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config (run.json's, of either format) as flat settings: the sections
    merged, ConvNet's flat options folded into `model` (those set beyond its defaults, sorted), a
    setting the run's format did not have at the default it then had. No torch: a report calls it."""
    flat = dict(config)
    for section in _SECTIONS:
        if isinstance(flat.get(section), dict):
            flat |= flat.pop(section)
    name, options = _model_options(flat.pop("model", "convnet"), _pop(flat, MODEL_KEYS))
    model = name + (f"({','.join(f'{k}={v}' for k, v in sorted(options.items()))})" if options else "")
    return field_defaults(flat_fields()) | flat | {"model": model}


def spec_differences(config: dict[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """What a run's recorded config sets otherwise than today's preset for its dataset, IPC and
    method: setting → (made with, now), a backbone's options one by one; the budget, the seed and
    the execution aside. None where the method is not known today."""
    made = recorded_settings(config)
    try:
        now = recorded_settings(preset(made["dataset"], int(made["ipc"]), made["method"]))
    except (AtomddError, KeyError, TypeError, ValueError):
        return None
    diffs = {k: (v, now[k]) for k, v in made.items() if k not in _NOT_SPEC | {"model"} and v != now.get(k)}
    (made_name, made_options), (now_name, options) = (
        _model_options(made["model"], {}),
        _model_options(now["model"], {}),
    )
    if made_name != now_name:
        diffs["model"] = (made["model"], now["model"])
    else:
        for k in sorted(made_options.keys() | options.keys()):  # an option missing: ConvNet's default
            if made_options.get(k) != options.get(k):
                diffs[k] = (
                    made_options.get(k, _LEGACY_CONVNET.get(k)),
                    options.get(k, _LEGACY_CONVNET.get(k)),
                )
    return diffs


def _pop(values: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: values.pop(k) for k in keys if k in values}


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed for one purpose at one step, independent of everything else that ran."""
    return derive_seed(seed, step, purpose)
