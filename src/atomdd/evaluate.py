"""The evaluation protocol: train fresh models on a set, test them on the real test set.

DM's protocol (DESIGN.md §2): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr ×0.1 at
half the epochs, DSA on every training batch, 1 000 epochs, accuracy (%) as mean ± std over runs
(std with ddof 0, as the published code's `np.std`). Runs default to 5, not the published 10–20:
on a CPU each run costs minutes, and `runs=20` reproduces the published count exactly.
Three small, documented differences from DM's `evaluate_synset`: it trains `epochs + 1` epochs and
resets the momentum when the lr drops (it rebuilds the optimiser), and its DSA draws one operation
per batch with per-sample magnitudes; here it is `epochs` epochs, momentum kept, and one operation
per sample (`augment`'s per-sample draws).

The models are trained and tested by `train.py` (N runs at once, stacked under vmap on CUDA).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from atomdd.data import Dataset, as_dataset
from atomdd.errors import AtomddError
from atomdd.hardware import resolve_device, resolve_precision
from atomdd.io import versions, write_json
from atomdd.models import ModelRef, parse_models
from atomdd.parallel import is_main_process
from atomdd.provenance import git_state
from atomdd.sets import SyntheticSet
from atomdd.settings import EvalConfig
from atomdd.train import test_models, train_models, use_batched

log = logging.getLogger(__name__)

RESULT_FILE = "eval.json"


class Accuracy(TypedDict):
    mean: float
    std: float
    runs: list[float]


class FirstAccuracy(Accuracy):
    images: int


class _ModelResultBase(Accuracy):
    seconds: float
    options: dict[str, Any]


class ModelResult(_ModelResultBase, total=False):
    """One architecture's result: accuracies in %, std with ddof 0; "first" with `test_limit`."""

    first: FirstAccuracy


class EvalReport(TypedDict):
    """What `evaluate_set` / `evaluate_whole` return, and what eval.json holds."""

    models: dict[str, ModelResult]
    config: dict[str, Any]
    precision: str
    batched: bool
    device: str
    dataset: str
    dataset_hash: str
    set: dict[str, Any]
    seconds: float
    versions: dict[str, str]
    git: dict[str, Any] | None  # the commit of the checkout that evaluated


# on_epoch(model, runs, epoch, loss): each epoch's mean training loss of the runs trained together
EpochHook = Callable[[str, list[int], int, float], None]


def _hook(on_epoch: EpochHook | None, model: str) -> Callable[[list[int], int, float], None] | None:
    return partial(on_epoch, model) if on_epoch is not None else None


def _accuracy(accs: list[float]) -> Accuracy:
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs}


def run_protocol(
    model: str | ModelRef,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    config: EvalConfig = EvalConfig(),
    on_epoch: Callable[[list[int], int, float], None] | None = None,
) -> ModelResult:
    """Train and test one architecture: {"mean", "std", "runs", "seconds"} (accuracies in %), and
    with `config.test_limit` N the same on the first N test images as "first"."""
    start = time.perf_counter()
    ref = ModelRef.parse(model)
    models = train_models(ref, train_images, train_labels, num_classes, config, on_epoch=on_epoch)
    accs = test_models(models, test_images, test_labels, config)
    result: dict[str, Any] = dict(_accuracy(accs))
    if config.test_limit:
        n = min(config.test_limit, len(test_labels))
        first = test_models(models, test_images[:n], test_labels[:n], config)
        result["first"] = {"images": n} | _accuracy(first)
    seconds = time.perf_counter() - start
    log.info("%s: %.2f ± %.2f %% over %d runs (%.1f s)", ref, np.mean(accs), np.std(accs), len(accs), seconds)
    return result | {"seconds": seconds, "options": ref.options_for(train_images.shape[-1])}


def _evaluate(
    kind: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    data: Dataset,
    models: str | Sequence[str | ModelRef],
    config: EvalConfig,
    out_dir: str | os.PathLike | None,
    on_epoch: EpochHook | None = None,
) -> EvalReport:
    start = time.perf_counter()
    refs = parse_models(models)  # every name and option checked before any work
    if not refs:
        raise AtomddError("no model to evaluate; name at least one (e.g. convnet)")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    resolved = replace(config, precision=precision)
    test_x = test[0].to(device)  # preprocessed once, kept on the device for every model
    train_x = train[0].to(device)
    results = {
        str(ref): run_protocol(
            ref, train_x, train[1], test_x, test[1], data.num_classes, resolved, _hook(on_epoch, str(ref))
        )
        for ref in refs
    }
    report: EvalReport = {
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
        "git": git_state(),
    }
    if out_dir is not None and is_main_process():
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
    models: str | Sequence[str | ModelRef] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    dataset: Dataset | None = None,
    on_epoch: EpochHook | None = None,
) -> EvalReport:
    """Run the protocol for each architecture on `syn`; write `out_dir/eval.json` if given.

    The test images go through the set's own fitted preprocessing (normalisation, ZCA), once.
    Returns an `EvalReport` (accuracies in %).
    """
    data = as_dataset(dataset if dataset is not None else syn.dataset, data_root)
    _check_set(syn, data)
    test_x = syn.preprocess()(data.test_images)
    kind = {"kind": "synthetic", "images": len(syn.labels), "ipc": syn.ipc}
    kind |= {k: syn.meta[k] for k in ("method", "source", "experiment") if k in syn.meta}
    train = (syn.images, syn.labels)
    return _evaluate(kind, train, (test_x, data.test_labels), data, models, config, out_dir, on_epoch)


def evaluate_whole(
    dataset: str | Dataset,
    models: str | Sequence[str | ModelRef] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    zca: bool = False,
    on_epoch: EpochHook | None = None,
) -> EvalReport:
    """The upper bound: the same protocol on the full train set (preprocessing fitted on it).

    Mind `config.epochs`: the default 1 000 is meant for a few hundred images, not 50 000.
    """
    data = as_dataset(dataset, data_root)
    prep = data.preprocess(zca)
    train = (prep(data.train_images), data.train_labels)
    kind = {"kind": "whole", "images": len(data.train_labels), "zca": zca}
    test = (prep(data.test_images), data.test_labels)
    return _evaluate(kind, train, test, data, models, config, out_dir, on_epoch)
