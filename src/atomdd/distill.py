"""The distillation loop: synthetic pixels matched to real data through random, frozen networks.

Every step draws a fresh network, a real batch per class and one augmentation per class from seeds
derived from (seed, step), so a step's randomness does not depend on what ran before it: resuming
from a checkpoint, or sharding classes over processes, reproduces the same run. All classes go
through one forward pass (instance norm keeps samples independent); classes are processed in chunks
only to bound memory, and the real branch runs without autograd.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from atomdd.augment import DSAConfig, draw
from atomdd.config import apply_overrides, load_config_file
from atomdd.data import Dataset, load_dataset
from atomdd.errors import AtomddError
from atomdd.hardware import resolve_device, resolve_precision
from atomdd.io import append_jsonl, atomic_path, derive_seed, read_jsonl, versions, write_bytes, write_json
from atomdd.matching import METHODS, MatchConfig, class_statistics, matching_loss, method_config
from atomdd.models import FeatureModel, get_spec, seeded_model
from atomdd.sets import SyntheticSet

CHECKPOINT = "checkpoint.safetensors"
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
    dsa: str = "color_crop_cutout_flip_scale_rotate"  # or "none"
    # backbone (options other than depth/width/norm/act/pool apply to convnet only)
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
        return MatchConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MatchConfig)})

    def model_options(self) -> dict[str, Any]:
        if self.model != "convnet":
            return {}
        return {
            "depth": self.depth,
            "width": self.width,
            "norm": self.norm,
            "act": self.act,
            "pool": self.pool,
        }


# Published settings (DataDAM's table; ATOM follows DM/DataDAM): (ipc → image lr), real batch,
# ZCA for CIFAR, depth 4 and twice λ at 64×64.
_HIGH_RES = {"tinyimagenet"}
_ZCA = {"cifar10", "cifar100"}


def preset(dataset: str, ipc: int, method: str) -> dict[str, Any]:
    """The published hyperparameters for a dataset × IPC × method, as config overrides."""
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
    return cfg


def validate(cfg: DistillConfig) -> None:
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
    get_spec(cfg.model)
    cfg.match()
    DSAConfig(strategy=cfg.dsa).ops()


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A 63-bit seed for one purpose at one step, independent of everything else that ran."""
    return derive_seed(seed, step, purpose)


def _generator(seed: int, step: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, purpose))


class Interrupted(AtomddError):
    """SIGINT/SIGTERM arrived; a checkpoint was written first."""


class Distiller:
    """Holds the state of one run: data on the device, synthetic pixels, optimiser, step."""

    def __init__(self, cfg: DistillConfig, data: Dataset | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_root, cfg.download)
        self.match = cfg.match()
        self.dsa = DSAConfig(strategy=cfg.dsa)
        self.prep = self.data.preprocess(cfg.zca)
        self.k = self.data.num_classes
        counts = torch.bincount(self.data.train_labels, minlength=self.k)
        for c, n in enumerate(counts.tolist()):
            if cfg.ipc > n:
                raise AtomddError(
                    f"ipc={cfg.ipc} but class {self.data.classes[c]!r} of {cfg.dataset} has only {n} train "
                    f"images; choose ipc ≤ {int(counts.min())}"
                )
        self.batch_real = min(cfg.batch_real, int(counts.min()))
        self.real = self.prep(self.data.train_images).to(self.device)
        self.class_idx = [i.to(self.device) for i in self.data.class_indices()]
        net = self.network(0)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()) and cfg.fused:
            raise AtomddError(
                "the backbone uses batch norm, which mixes the classes of a fused pass; "
                "use an instance-norm backbone or set fused=false"
            )
        self.num_blocks = len(net.features(self.real[:1]).activations)
        self.labels = torch.arange(self.k).repeat_interleave(cfg.ipc)
        self.syn = torch.nn.Parameter(self._init_images())
        self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.step = 0

    # --- one step -------------------------------------------------------------------------
    def network(self, step: int) -> FeatureModel:
        """A freshly initialised, frozen network, the same for a given (seed, step) on any device."""
        net = seeded_model(
            step_seed(self.cfg.seed, step, "net"),
            self.cfg.model,
            self.data.channels,
            self.k,
            self.data.image_size,
            **self.cfg.model_options(),
        )
        net.requires_grad_(False)
        return net.to(self.device).train()

    def _init_images(self) -> torch.Tensor:
        gen = _generator(self.cfg.seed, -1, "init")
        c, (h, w) = self.data.channels, self.data.image_size
        if self.cfg.init == "noise":
            return torch.randn(self.k * self.cfg.ipc, c, h, w, generator=gen).to(self.device)
        picks = [
            idx[torch.randperm(len(idx), generator=gen)[: self.cfg.ipc].to(idx.device)]
            for idx in self.class_idx
        ]
        return self.real[torch.cat(picks)].clone()

    def _class_chunks(self) -> list[range]:
        per_class = self.batch_real + self.cfg.ipc
        images = self.cfg.chunk_images or (256 if self.device.type == "cpu" else 8192)
        size = max(1, images // per_class) if self.cfg.fused else 1
        return [range(s, min(s + size, self.k)) for s in range(0, self.k, size)]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def loss_and_grad(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradient of one step's loss into the synthetic pixels; return the loss."""
        net = self.network(step)
        gen = _generator(self.cfg.seed, step, "real")
        idx = torch.stack(
            [i[torch.randperm(len(i), generator=gen)[: self.batch_real].to(i.device)] for i in self.class_idx]
        )
        aug = draw(
            self.k, self.data.image_size, _generator(self.cfg.seed, step, "aug"), self.dsa, self.device
        )
        ipc, b = self.cfg.ipc, self.batch_real
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for chunk in self._class_chunks():
            classes = torch.arange(chunk.start, chunk.stop, device=self.device)
            with torch.no_grad(), self._autocast():
                real = aug.apply(
                    self.real[idx[chunk.start : chunk.stop].flatten()], classes.repeat_interleave(b)
                )
                real_stats = class_statistics(net.features(real), len(chunk), self.match)
            with self._autocast():
                syn = self.syn[chunk.start * ipc : chunk.stop * ipc]
                syn_stats = class_statistics(
                    net.features(aug.apply(syn, classes.repeat_interleave(ipc))), len(chunk), self.match
                )
            loss, chunk_terms = matching_loss(syn_stats, real_stats, self.num_blocks, self.match)
            loss.backward()
            total += loss.detach()
            for name, v in chunk_terms.items():
                terms[name] = terms.get(name, 0) + v
        return total, terms

    # --- checkpoints ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"syn": self.syn.detach().cpu().contiguous(), "cpu_rng": torch.get_rng_state()}
        buf = self.opt.state.get(self.syn, {}).get("momentum_buffer")
        if buf is not None:
            tensors["momentum"] = buf.detach().cpu().contiguous()
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": str(self.step),
            "config": json.dumps(asdict(self.cfg)),
            "dataset_hash": self.data.content_hash,
        }
        return tensors, meta

    def save_checkpoint(self, out: Path) -> None:
        tensors, meta = self.state()
        with atomic_path(out / CHECKPOINT) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load_checkpoint(self, out: Path) -> None:
        path = out / CHECKPOINT
        if not path.exists():
            raise AtomddError(f"--resume: no checkpoint at {path}; run without --resume to start fresh")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            saved = json.loads(meta["config"])
            step = int(meta["step"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise AtomddError(f"checkpoint {path} is corrupt or not an atomdd checkpoint: {e}") from None
        mine = asdict(self.cfg)
        differ = {k: (saved.get(k), v) for k, v in mine.items() if k not in RESUMABLE and saved.get(k) != v}
        if differ:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise AtomddError(f"checkpoint {path} was made with another config ({lines}); use another --out")
        if meta.get("dataset_hash") != self.data.content_hash:
            raise AtomddError(
                f"checkpoint {path} was made on different {self.cfg.dataset} data (hash differs)"
            )
        with torch.no_grad():
            self.syn.copy_(tensors["syn"].to(self.device))
        if "momentum" in tensors:
            self.opt.state[self.syn]["momentum_buffer"] = tensors["momentum"].to(self.device)
        torch.set_rng_state(tensors["cpu_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.step = step

    # --- the loop -------------------------------------------------------------------------
    def run(self, out: Path | None = None, resume: bool = False, quiet: bool = True) -> SyntheticSet:
        cfg = self.cfg
        if out is not None:
            out = Path(out)
            if resume:
                self.load_checkpoint(out)
                _truncate_metrics(out / "metrics.jsonl", self.step)
            elif (out / CHECKPOINT).exists():
                raise AtomddError(
                    f"{out} already holds a run; pass --resume to continue it, or use another --out"
                )
            else:
                out.mkdir(parents=True, exist_ok=True)
                (out / "metrics.jsonl").unlink(missing_ok=True)
            write_json(out / "run.json", self._record("running", 0.0, out))
        start, t0 = self.step, time.perf_counter()
        bar = _progress(start, cfg.iterations, quiet)
        with _signals_to_flag() as stop:
            while self.step < cfg.iterations:
                self.opt.zero_grad(set_to_none=True)
                loss, terms = self.loss_and_grad(self.step)
                value = float(loss)
                if not math.isfinite(value):
                    kept = f"; the last good checkpoint is kept in {out}" if out else ""
                    raise AtomddError(
                        f"the loss became {value} at step {self.step}{kept}. Lower lr_img (now {cfg.lr_img}) "
                        "or check the data for NaNs"
                    )
                self.opt.step()
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                    bar.set_postfix(loss=f"{value:.4g}")
                    if out is not None:
                        row = {"step": self.step, "loss": value, "seconds": time.perf_counter() - t0}
                        append_jsonl(out / "metrics.jsonl", row | {k: float(v) for k, v in terms.items()})
                if out is not None and (self.step % cfg.checkpoint_every == 0 or stop.flag):
                    self.save_checkpoint(out)
                if stop.flag:
                    bar.close()
                    raise Interrupted(
                        f"interrupted at step {self.step}; checkpoint saved in {out}; continue with --resume"
                        if out
                        else f"interrupted at step {self.step}"
                    )
        bar.close()
        seconds = time.perf_counter() - t0
        result = self.result()
        if out is not None:
            self.save_checkpoint(out)
            result.save(out)
            write_json(out / "run.json", self._record("done", seconds, out, steps_run=self.step - start))
            from atomdd.report import save_run_figures

            save_run_figures(self, result, out)
        return result

    def result(self) -> SyntheticSet:
        meta = {
            "method": self.cfg.method,
            "ipc": self.cfg.ipc,
            "seed": self.cfg.seed,
            "steps": self.step,
            "dataset_hash": self.data.content_hash,
            "config": asdict(self.cfg),
        }
        return SyntheticSet.of(
            self.syn.detach().cpu().clone(), self.labels.clone(), self.data, self.prep, meta
        )

    def _record(self, status: str, seconds: float, out: Path, steps_run: int = 0) -> dict[str, Any]:
        return {
            "status": status,
            "config": asdict(self.cfg),
            "resolved": {
                "device": str(self.device),
                "precision": self.precision,
                "batch_real": self.batch_real,
            },
            "versions": versions(),
            "dataset": self.data.summary(),
            "step": self.step,
            "wall_seconds": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "loss": loss_summary(out),
            "peak_memory_mb": _peak_memory_mb(self.device),
            "command": " ".join(sys.argv),
        }


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint, so a resumed run's log reads as one run."""
    if path.exists():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def loss_summary(out: Path) -> dict[str, float]:
    rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    if not rows:
        return {}
    losses = [r["loss"] for r in rows]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "logged": len(rows)}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Flag:
    flag = False


@contextmanager
def _signals_to_flag() -> Iterator[_Flag]:
    """SIGINT/SIGTERM finish the current step and checkpoint instead of killing the process."""
    state = _Flag()

    def handler(signum, frame):  # noqa: ARG001
        if state.flag:  # a second signal: stop now
            raise KeyboardInterrupt
        state.flag = True

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no handlers, no flag
        yield state
        return
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _progress(start: int, total: int, quiet: bool):
    from tqdm import tqdm

    interval = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s, not every step
    return tqdm(
        initial=start,
        total=total,
        disable=quiet,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=interval,
    )


def distill(
    dataset: str | None = None,
    ipc: int | None = None,
    method: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> SyntheticSet:
    """Distil `dataset` (default digits) to `ipc` (10) images per class with `method` (atom).

    `overrides` are any `DistillConfig` fields (e.g. iterations=1000, lr_img=1.0, p_spatial=2).
    With `out`, writes synthetic.safetensors, run.json, metrics.jsonl, grid.png, attention.png and a
    checkpoint there; `resume=True` continues from that checkpoint.
    """
    cfg = make_config(dataset, ipc, method, config_file, **overrides)
    return Distiller(cfg).run(out, resume=resume, quiet=quiet)
