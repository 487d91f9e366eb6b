"""The settings of a distillation run and the published presets. No torch at import: the CLI
builds its flags from `DistillConfig` without loading it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomdd.config import apply_overrides, load_config_file
from atomdd.errors import AtomddError
from atomdd.io import derive_seed
from atomdd.settings import DSA_DEFAULT

if TYPE_CHECKING:
    from atomdd.matching import MatchConfig
    from atomdd.models import ModelRef

# Keys that may change between a checkpoint and its resumption without changing the result.
RESUMABLE = {"iterations", "checkpoint_every", "log_every", "data_root", "download", "device", "chunk_images"}


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
    dsa: str = DSA_DEFAULT  # or "none"
    # backbone: a model reference, e.g. "convnet" or "resnet18(norm=batchnorm)"; the flat depth … pool
    # below apply to convnet only, and options written in `model` win over them
    model: str = "convnet"
    depth: int = 3
    width: int = 128
    norm: str = "instancenorm"
    act: str = "relu"
    pool: str = "avgpool"
    # the matching loss (defaults come from the method; see matching.METHODS)
    spatial: float = 1.0
    channel: float = 1.0
    embedding: float = 0.1
    p_spatial: float = 4.0
    p_channel: float = 4.0
    layers: str = "all-but-last"
    scale: float = 100.0
    # execution
    fused: bool = True  # all classes in one pass; False = one class per pass (the published loop)
    chunk_images: int = 0  # images per forward pass; 0 = auto (256 on CPU: cache-friendly, 8192 on GPU)
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; falls back to fp32 without fast bf16)
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    data_root: str | None = None
    download: bool = False

    def match(self) -> MatchConfig:
        from atomdd.matching import MatchConfig

        return MatchConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MatchConfig)})

    def model_ref(self) -> ModelRef:
        """`model` as a reference: a name, or a name with options (`convnet(depth=2,pool=maxpool)`)."""
        from atomdd.models import ModelRef

        return ModelRef.parse(self.model)

    def model_options(self) -> dict[str, Any]:
        """The backbone's options: for convnet the flat fields (depth … pool), then the options
        written in `model` itself, which win."""
        ref = self.model_ref()
        flat = ("depth", "width", "norm", "act", "pool")
        base = {k: getattr(self, k) for k in flat} if ref.name == "convnet" else {}
        return base | dict(ref.options)


# Published settings (DataDAM's table; ATOM follows DM/DataDAM): (ipc → image lr), real batch,
# ZCA for CIFAR, depth 4 and twice λ at 64×64.
_HIGH_RES = {"tinyimagenet"}
_ZCA = {"cifar10", "cifar100"}


def preset(dataset: str, ipc: int, method: str) -> dict[str, Any]:
    """The published hyperparameters for a dataset × IPC × method, as config overrides."""
    from atomdd.matching import METHODS, method_config

    if method not in METHODS:
        method_config(method)  # raises the unknown-name error
    m = METHODS[method]
    values: dict[str, Any] = {
        "dataset": dataset,
        "ipc": ipc,
        "method": method,
        "lr_img": 1.0 if ipc <= 50 else 10.0,
        "batch_real": 256 if method == "dm" else 64,
        "zca": dataset in _ZCA,
        "depth": 4 if dataset in _HIGH_RES else 3,
        **{f.name: getattr(m, f.name) for f in dataclasses.fields(m)},
    }
    if dataset in _HIGH_RES and method != "dm":
        values["embedding"] = 2 * m.embedding  # DataDAM doubles λ at 64×64 (0.01 → 0.02)
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
    for key in ("dataset", "ipc", "method"):
        file_values.pop(key, None)
    cfg = apply_overrides(DistillConfig(), preset(dataset, ipc, method), "config key")
    cfg = apply_overrides(cfg, file_values, "config key")
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "config key")
    validate(cfg)
    return dataclasses.replace(cfg, model=str(cfg.model_ref()))  # one spelling per model


def validate(cfg: DistillConfig) -> None:
    from atomdd.augment import DSAConfig

    if cfg.ipc < 1:
        raise AtomddError(f"ipc must be ≥ 1 (images per class), got {cfg.ipc}")
    if cfg.iterations < 0:
        raise AtomddError("iterations must be ≥ 0")
    if cfg.init not in ("real", "noise"):
        raise AtomddError(f"init must be 'real' or 'noise', got {cfg.init!r}")
    if cfg.lr_img <= 0 or cfg.batch_real < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise AtomddError("lr_img must be > 0, and batch_real, checkpoint_every, log_every ≥ 1")
    if cfg.chunk_images < 0:
        raise AtomddError("chunk_images must be ≥ 0 (0 = automatic)")
    cfg.model_ref()
    cfg.match()
    DSAConfig(strategy=cfg.dsa).ops()


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed for one purpose at one step, independent of everything else that ran."""
    return derive_seed(seed, step, purpose)
