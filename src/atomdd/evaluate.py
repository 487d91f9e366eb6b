"""The evaluation protocol: train fresh models on a set, test them on the real test set.

DM's protocol (DESIGN.md §2): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr ×0.1 at
half the epochs, DSA on every training batch, 1 000 epochs, accuracy (%) as mean ± std over runs
(std with ddof 0, as the published code's `np.std`). Runs default to 5, not the published 10–20:
on a CPU each run costs minutes, and `runs=20` reproduces the published count exactly.
Three small, documented differences from DM's `evaluate_synset`: it trains `epochs + 1` epochs and
resets the momentum when the lr drops (it rebuilds the optimiser), and its DSA draws one operation
per batch with per-sample magnitudes; here it is `epochs` epochs, momentum kept, and one operation
per sample (`augment`'s per-sample draws).

The N runs of one protocol can train *together* (`batched`): their parameters are stacked and the
model runs under `torch.vmap` (which turns each convolution into one grouped convolution), so one
optimiser step updates every run; by default on CUDA only, as on a CPU it measured no faster (see
`use_batched`). Run r draws its initial weights, its batch order and its augmentations from
seeds derived from (seed, r) alone, and the batched and the sequential paths consume them in the
same order, so both give the same per-run results (to float tolerance). Batch-norm models work in
the batched path too: their running statistics are stacked buffers updated in place under vmap.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from atomdd.augment import DEFAULT_STRATEGY, Draw, DSAConfig, draw
from atomdd.data import Dataset, load_dataset
from atomdd.data.transforms import Preprocess
from atomdd.errors import AtomddError
from atomdd.hardware import PRECISIONS, resolve_device, resolve_precision
from atomdd.io import derive_seed, versions, write_json
from atomdd.models import FeatureModel, create_model, get_spec
from atomdd.synthetic import FILENAME, SyntheticSet, load_synthetic

log = logging.getLogger(__name__)

RESULT_FILE = "eval.json"


@dataclass(frozen=True)
class EvalConfig:
    """Every knob of the protocol; the defaults are DM's published evaluation settings."""

    epochs: int = 1000
    runs: int = 5  # models trained per architecture (published: 10 or 20)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay: float = 0.1  # lr factor applied from epoch int(epochs · decay_at) on
    decay_at: float = 0.5
    dsa: str = DEFAULT_STRATEGY  # DSA strategy for the training batches, "none" to train without
    # test images per forward pass, summed over the models of a stack: DM's 256; on the CPU measured,
    # 16–64 ran up to 1.5× faster (activations stay in cache), on a GPU larger is faster
    test_batch: int = 256
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; fp32 master weights, loss and update)
    batched: bool | None = None  # runs together under vmap; None: on CUDA yes, on a CPU no (see below)
    stack_size: int = 0  # at most this many runs per stack (bounds memory); 0 = all runs at once
    # also test on the first N test images alone (0: no): a test set only partly exact, as the
    # CIFAR-10 copy this project is checked on, reports its exact part beside the whole
    test_limit: int = 0

    def __post_init__(self) -> None:
        positive = ("epochs", "runs", "batch_size", "test_batch")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("lr", "lr_decay") if not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("momentum", "weight_decay") if getattr(self, k) < 0]
        if not 0 <= self.decay_at <= 1:
            bad.append(f"decay_at={self.decay_at} (a fraction of the epochs, 0–1)")
        if self.test_limit < 0:
            bad.append(f"test_limit={self.test_limit} (0 means no separate first-N accuracy)")
        if self.stack_size < 0:
            bad.append(f"stack_size={self.stack_size} (0 means all runs in one stack)")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        if bad:
            raise AtomddError(f"invalid evaluation setting(s): {', '.join(bad)}")
        DSAConfig(strategy=self.dsa).ops()  # an unknown operation is an error now, not mid-run


def run_seed(seed: int, run: int, purpose: str) -> int:
    """A 63-bit seed for one purpose of one run, independent of every other run and of the path."""
    return derive_seed("eval", seed, run, purpose)


def model_options(name: str, image_size: int) -> dict[str, Any]:
    """The published evaluation network for an image size: ConvNet is depth 4 from 64 px on."""
    return {"depth": 4} if name == "convnet" and image_size >= 64 else {}


def init_models(
    name: str, channels: int, num_classes: int, image_size: int, runs: Sequence[int], seed: int
) -> list[FeatureModel]:
    """Fresh models, run r initialised from (seed, r) on the CPU: identical on every device."""
    get_spec(name)  # an unknown name is an error before any work
    models = []
    for r in runs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run_seed(seed, r, "init"))
            models.append(
                create_model(name, channels, num_classes, image_size, **model_options(name, image_size))
            )
    return models


class _RunStream:
    """The random choices of one run (batch order, augmentations), drawn in protocol order."""

    def __init__(self, seed: int, run: int, dsa: DSAConfig, size: tuple[int, int]) -> None:
        self.gen = torch.Generator().manual_seed(run_seed(seed, run, "train"))
        self.dsa = dsa if dsa.ops() else None
        self.size = size

    def order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)

    def draw(self, count: int) -> Draw | None:
        return draw(count, self.size, self.gen, self.dsa) if self.dsa is not None else None


def _cat_draws(draws: list[Draw]) -> Draw:
    return Draw(**{f.name: torch.cat([getattr(d, f.name) for d in draws]) for f in fields(Draw)})


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _lr(config: EvalConfig, epoch: int) -> float:
    return config.lr * (config.lr_decay if epoch >= int(config.epochs * config.decay_at) else 1.0)


def _sgd(params: Any, config: EvalConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def use_batched(config: EvalConfig, device: torch.device) -> bool:
    """The path a run takes: `config.batched`, or by default batched on CUDA only.

    On the CPU measured (benchmarks/eval_speed.py: 2-core AVX2 EPYC) the sequential path was
    1.1–2× faster: one model's step already runs at over half the core's fp32 matmul rate, oneDNN's
    grouped convolution (what vmap lowers a stacked convolution to) is no faster than separate
    ones, and vmap's group-norm rule is 3–10× slower than the fused per-model kernel. On a GPU such
    small steps are bound by kernel launches, which stacking amortises (not measured: no GPU here).
    """
    return config.batched if config.batched is not None else device.type == "cuda"


def _stacks(n: int, config: EvalConfig, batched: bool) -> list[range]:
    size = (config.stack_size or n) if batched else 1
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.bfloat16)


class _Bf16Conv2d(nn.Conv2d):
    """A Conv2d computed in bf16 with an fp32 output. Under vmap, autocast leaves convolutions in
    fp32 and vmap's batch-norm rule rejects bf16 inputs with fp32 statistics (PyTorch 2.13,
    measured), so the batched bf16 path casts the heavy ops explicitly and keeps the rest fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(_bf16(x), _bf16(self.weight), _bf16(self.bias)).float()


class _Bf16Linear(nn.Linear):
    """A Linear computed in bf16 with an fp32 output (see `_Bf16Conv2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_bf16(x), _bf16(self.weight), _bf16(self.bias)).float()


class _Stack:
    """R copies of one architecture as stacked tensors, called under vmap (run r = slice r)."""

    def __init__(self, models: Sequence[nn.Module], precision: str = "fp32") -> None:
        self.models = list(models)
        params, self.buffers = stack_module_state(self.models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(self.models[0]).to("meta")  # the fp32 master weights stay in params
        if precision == "bf16":
            for m in self.base.modules():
                if type(m) is nn.Conv2d:
                    m.__class__ = _Bf16Conv2d
                elif type(m) is nn.Linear:
                    m.__class__ = _Bf16Linear

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits R×B×K of R×B×… inputs (one batch per run), or of one B×… batch for all runs."""
        return torch.vmap(self._call, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def write_back(self) -> None:
        """Copy the stacked state into the individual models."""
        with torch.no_grad():
            for r, model in enumerate(self.models):
                for name, t in (*model.named_parameters(), *model.named_buffers()):
                    src = self.params[name] if name in self.params else self.buffers[name]
                    t.copy_(src[r])


def train_models(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: EvalConfig = EvalConfig(),
    runs: Sequence[int] | None = None,
) -> list[FeatureModel]:
    """Train `config.runs` fresh models (or the given run numbers) on model-space `images`.

    The precision is used as given (resolve it first with `hardware.resolve_precision`, as
    `evaluate_set` does); the device is `config.device`. Returns the trained models, on that device.
    """
    device = resolve_device(config.device)
    x, y = images.to(device, torch.float32), labels.to(device)
    runs = list(range(config.runs)) if runs is None else list(runs)
    size = (x.shape[2], x.shape[3])
    models = [m.to(device) for m in init_models(name, x.shape[1], num_classes, size[0], runs, config.seed)]
    dsa = DSAConfig(strategy=config.dsa)
    streams = [_RunStream(config.seed, r, dsa, size) for r in runs]
    batched = use_batched(config, device)
    for part in _stacks(len(runs), config, batched):
        group, group_streams = [models[i] for i in part], [streams[i] for i in part]
        if batched:
            _train_stack(_Stack(group, config.precision), group_streams, x, y, config, device)
        else:
            _train_single(group[0], group_streams[0], x, y, config, device)
    return models


def _train_single(
    model: nn.Module,
    stream: _RunStream,
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvalConfig,
    device: torch.device,
) -> None:
    opt = _sgd(model.parameters(), config)
    model.train()
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = _lr(config, epoch)
        for idx in stream.order(len(x)).to(device).split(config.batch_size):
            xb, aug = x[idx], stream.draw(len(idx))
            if aug is not None:
                xb = aug.to(device).apply(xb)
            with _autocast(device, config.precision):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _train_stack(
    stack: _Stack,
    streams: list[_RunStream],
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvalConfig,
    device: torch.device,
) -> None:
    # SGD's momentum and weight decay are elementwise: one optimiser over stacked parameters is
    # exactly R independent optimisers, and each run's loss is its own batch mean.
    opt = _sgd(list(stack.params.values()), config)
    stack.base.train()
    r, n = len(streams), len(x)
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = _lr(config, epoch)
        orders = torch.stack([s.order(n) for s in streams]).to(device)
        for start in range(0, n, config.batch_size):
            idx = orders[:, start : start + config.batch_size]
            b = idx.shape[1]
            xb = x[idx.flatten()]
            draws = [s.draw(b) for s in streams]
            if draws[0] is not None:
                xb = _cat_draws(draws).to(device).apply(xb)
            with _autocast(device, config.precision):
                logits = stack(xb.view(r, b, *x.shape[1:]))
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y[idx].flatten(), reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.view(r, b).mean(1).sum().backward()
            opt.step()
    stack.write_back()


@torch.no_grad()
def test_models(
    models: Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor, config: EvalConfig = EvalConfig()
) -> list[float]:
    """Accuracy (%) of each model (eval mode) on model-space test `images`, in batches, no autograd."""
    device = resolve_device(config.device)
    x, y = images.to(device, torch.float32), labels.to(device)
    correct = []
    batched = use_batched(config, device)
    for part in _stacks(len(models), config, batched):
        group = [models[i].eval() for i in part]
        hits = torch.zeros(len(group), dtype=torch.long, device=device)
        if batched:
            stack = _Stack(group, config.precision)
            stack.base.eval()
            chunk = max(1, config.test_batch // len(group))
            for xb, yb in zip(x.split(chunk), y.split(chunk), strict=True):
                with _autocast(device, config.precision):
                    pred = stack(xb, shared=True).argmax(-1)
                hits += (pred == yb).sum(1)
        else:
            for xb, yb in zip(x.split(config.test_batch), y.split(config.test_batch), strict=True):
                with _autocast(device, config.precision):
                    hits += (group[0](xb).argmax(-1) == yb).sum()
        correct += hits.tolist()
    return [100.0 * c / len(y) for c in correct]


def run_protocol(
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    config: EvalConfig = EvalConfig(),
) -> dict[str, Any]:
    """Train and test one architecture: {"mean", "std", "runs", "seconds"} (accuracies in %), and
    with `config.test_limit` N the same on the first N test images as "first"."""
    start = time.perf_counter()
    models = train_models(name, train_images, train_labels, num_classes, config)
    accs = test_models(models, test_images, test_labels, config)
    result: dict[str, Any] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs}
    if config.test_limit:
        n = min(config.test_limit, len(test_labels))
        first = test_models(models, test_images[:n], test_labels[:n], config)
        result["first"] = {
            "images": n,
            "mean": float(np.mean(first)),
            "std": float(np.std(first)),
            "runs": first,
        }
    seconds = time.perf_counter() - start
    log.info(
        "%s: %.2f ± %.2f %% over %d runs (%.1f s)", name, np.mean(accs), np.std(accs), len(accs), seconds
    )
    return result | {"seconds": seconds, "options": model_options(name, train_images.shape[-1])}


def _evaluate(
    kind: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    data: Dataset,
    models: Sequence[str],
    config: EvalConfig,
    out_dir: str | os.PathLike | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    if not models:
        raise AtomddError("no model to evaluate; name at least one (e.g. convnet)")
    for name in models:
        get_spec(name)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    resolved = replace(config, precision=precision)
    test_x = test[0].to(device)  # preprocessed once, kept on the device for every model
    train_x = train[0].to(device)
    results = {
        name: run_protocol(name, train_x, train[1], test_x, test[1], data.num_classes, resolved)
        for name in models
    }
    report = {
        "models": results,
        "config": asdict(config),
        "precision": precision,
        "batched": use_batched(config, device),
        "device": str(device),
        "dataset": data.name,
        "dataset_hash": data.content_hash,
        "set": kind,
        "seconds": time.perf_counter() - start,
        "versions": versions(),
    }
    if out_dir is not None:
        write_json(Path(out_dir) / RESULT_FILE, report)
    return report


def _check_set(syn: SyntheticSet, data: Dataset) -> None:
    recorded = syn.meta.get("dataset_hash")
    if recorded and recorded != data.content_hash:
        raise AtomddError(
            f"this set was made from a different copy of {data.name!r} (hash {recorded[:12]}…, the "
            f"loaded data is {data.content_hash[:12]}…); evaluate it against the data it was made from "
            "(check --data-root)"
        )
    want = (data.channels, *data.image_size)
    if tuple(syn.images.shape[1:]) != want:
        raise AtomddError(
            f"the set's images are {tuple(syn.images.shape[1:])}, but {data.name} images are {want} (C×H×W)"
        )
    if len(syn.labels) and not 0 <= int(syn.labels.min()) <= int(syn.labels.max()) < data.num_classes:
        raise AtomddError(f"the set's labels must lie in 0–{data.num_classes - 1} for {data.name}")


def evaluate_set(
    syn: SyntheticSet,
    models: Sequence[str] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Run the protocol for each architecture on `syn`; write `out_dir/eval.json` if given.

    The test images go through the set's own fitted preprocessing (normalisation, ZCA), once.
    Returns {"models": {name: {"mean", "std", "runs", "seconds", "options"}}, "config", "precision",
    "device", "dataset", "dataset_hash", "set", "seconds", "versions"} (accuracies in %).
    """
    data = dataset if dataset is not None else load_dataset(syn.dataset, data_root)
    _check_set(syn, data)
    test_x = syn.preprocess()(data.test_images)
    kind = {"kind": "synthetic", "images": len(syn.labels), "ipc": syn.ipc}
    kind |= {k: syn.meta[k] for k in ("method", "source", "experiment") if k in syn.meta}
    return _evaluate(
        kind, (syn.images, syn.labels), (test_x, data.test_labels), data, models, config, out_dir
    )


def evaluate_whole(
    dataset: str | Dataset,
    models: Sequence[str] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    zca: bool = False,
) -> dict[str, Any]:
    """The upper bound: the same protocol on the full train set (preprocessing fitted on it).

    Mind `config.epochs`: the default 1 000 is meant for a few hundred images, not 50 000.
    """
    data = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    prep = Preprocess(data.mean, data.std, zca=zca).fit(data.train_images)
    train = (prep(data.train_images), data.train_labels)
    kind = {"kind": "whole", "images": len(data.train_labels), "zca": zca}
    return _evaluate(kind, train, (prep(data.test_images), data.test_labels), data, models, config, out_dir)


def format_table(report: dict[str, Any]) -> str:
    """The model × accuracy table of a report, as markdown."""
    first = report["config"].get("test_limit", 0)
    extra = f" first {first} test images (%) |" if first else ""
    rows = [f"| model | accuracy (%) |{extra} runs | seconds |", "|---|---|" + "---|" * (2 + bool(first))]
    for name, r in report["models"].items():
        f = f" {r['first']['mean']:.2f} ± {r['first']['std']:.2f} |" if first else ""
        n, sec = len(r["runs"]), r["seconds"]
        rows.append(f"| {name} | {r['mean']:.2f} ± {r['std']:.2f} |{f} {n} | {sec:.1f} |")
    s = report.get("set", {})
    what = f"{s.get('kind', '?')} set of {s.get('images', '?')} images"
    return f"{report.get('dataset', '?')}, {what}, {report['config']['epochs']} epochs\n" + "\n".join(rows)


# --- peers' sets --------------------------------------------------------------------------------

_IMAGE_KEYS = ("images", "image_syn", "images_syn", "x", "data")
_LABEL_KEYS = ("labels", "label_syn", "labels_syn", "y", "targets")


def _peer_tensors(obj: Any, file: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(images, labels, provenance) from the structures the published code saves."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), (list, tuple)):
        exps = obj["data"]
        if not exps or not isinstance(exps[-1], (list, tuple)) or len(exps[-1]) != 2:
            raise AtomddError(
                f"{file}: 'data' must be a non-empty list of [images, labels] pairs (DC/DSA/DM/DataDAM's "
                "format)"
            )
        # DC/DSA/DM/DataDAM append one [image_syn, label_syn] per experiment: the last is the final one
        return exps[-1][0], exps[-1][1], {"experiment": len(exps) - 1, "experiments": len(exps)}
    if isinstance(obj, dict):
        img = next((obj[k] for k in _IMAGE_KEYS if k in obj), None)
        lab = next((obj[k] for k in _LABEL_KEYS if k in obj), None)
        if img is not None and lab is not None:
            return img, lab, {}
        raise AtomddError(
            f"{file}: expected {{'data': [[images, labels], ...]}} or a dict with one of the keys "
            f"{list(_IMAGE_KEYS)} and one of {list(_LABEL_KEYS)}; found keys {sorted(map(str, obj))}"
        )
    if isinstance(obj, (list, tuple)) and len(obj) == 2:
        return obj[0], obj[1], {}
    raise AtomddError(
        f"{file}: expected {{'data': [[images, labels], ...]}}, an (images, labels) pair or a dict of "
        f"images and labels; found {type(obj).__name__}"
    )


def load_peer_set(
    path: str | os.PathLike,
    dataset: str | Dataset,
    data_root: str | os.PathLike | None = None,
    zca: bool = False,
) -> SyntheticSet:
    """A `.pt` saved by the published DC/DSA/DM/DataDAM code, as a `SyntheticSet` of `dataset`.

    Their images are already normalised (and ZCA-whitened when they used ZCA, e.g. CIFAR): pass
    `zca` as they did, and the same preprocessing is fitted on the named dataset and attached.
    Of a multi-experiment file, the last experiment is taken. Loaded with `weights_only=True`: a
    file that needs to run code to load is refused.
    """
    file = Path(path)
    if not file.is_file():
        raise AtomddError(f"no such file: {file}")
    try:
        obj = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        reason = found.group(1).split(". Please")[0] if found else str(e).strip().splitlines()[-1]
        if "global" in reason.lower():
            raise AtomddError(
                f"{file} was refused: it can only be loaded by running code it names ({reason}); "
                "atomdd loads peers' files with weights_only=True, which reads tensors, numbers, lists "
                "and dicts only. Re-save the images and labels as plain tensors if you trust the file"
            ) from None
        raise AtomddError(f"{file} is not a torch.save file that can be read safely: {reason}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = (
            str(e).strip().splitlines()[0] if str(e).strip() else f"{type(e).__name__} (truncated or empty?)"
        )
        raise AtomddError(f"{file} is not a readable torch.save file: {why}") from None
    images, labels, prov = _peer_tensors(obj, file)
    data = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    want = (data.channels, *data.image_size)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise AtomddError(f"{file}: images must be a float N×C×H×W tensor (model space), got {got}")
    if tuple(images.shape[1:]) != want:
        raise AtomddError(f"{file}: images are {tuple(images.shape[1:])}, {data.name} needs {want} (C×H×W)")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise AtomddError(f"{file}: labels must be an integer tensor (one class index per image)")
    if labels.shape != (len(images),):
        raise AtomddError(f"{file}: {len(images)} images but labels of shape {tuple(labels.shape)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < data.num_classes:
        raise AtomddError(
            f"{file}: labels range {int(labels.min())}–{int(labels.max())}, {data.name} has classes "
            f"0–{data.num_classes - 1}"
        )
    if not bool(torch.isfinite(images).all()):
        raise AtomddError(f"{file}: images contain NaN or infinite values")
    prep = Preprocess(data.mean, data.std, zca=zca).fit(data.train_images)
    return SyntheticSet(
        images=images.detach().float().contiguous(),
        labels=labels.long(),
        dataset=data.name,
        classes=data.classes,
        preprocess_tensors=prep.tensors(),
        preprocess_meta=prep.meta(),
        meta={"method": "peer", "source": str(file), "dataset_hash": data.content_hash, **prov},
    )


def load_any(
    path: str | os.PathLike,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    zca: bool = False,
) -> SyntheticSet:
    """An atomdd run folder / `synthetic.safetensors`, or a peer's `.pt` (which needs `dataset`)."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".safetensors" or p.name == FILENAME:
        return load_synthetic(p)
    if not p.exists():
        raise AtomddError(f"no such file or folder: {p}")
    if dataset is None:
        raise AtomddError(f"{p} is not an atomdd set; for a peer's .pt name its dataset (--dataset NAME)")
    return load_peer_set(p, dataset, data_root, zca=zca)
