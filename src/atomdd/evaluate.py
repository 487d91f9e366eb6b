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

import json
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
from atomdd.errors import AtomddError, WriteError
from atomdd.evaljobs import shard_runs, train_runs
from atomdd.hardware import resolve_precision
from atomdd.io import versions
from atomdd.lock import hold
from atomdd.models import ModelRef, check_model, parse_models
from atomdd.parallel import init, is_main_process, world_size
from atomdd.progress import Progress
from atomdd.provenance import git_state
from atomdd.results import RESULT_FILE, RunStore, merge_report, run_protocol_key, set_id
from atomdd.sets import SyntheticSet
from atomdd.settings import EvalConfig
from atomdd.train import use_batched

log = logging.getLogger(__name__)

__all__ = ["RESULT_FILE", "EvalReport", "ModelResult", "evaluate_set", "evaluate_whole", "run_protocol"]


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


def _epoch_hook(
    bar: Progress | None, on_epoch: Callable[[list[int], int, float], None] | None, config: EvalConfig
) -> Callable[[list[int], int, torch.Tensor], None] | None:
    """train_models' per-epoch hook: advance the bar ("runs 1–5/5, epoch 3/300") and pass the
    epoch's mean loss on (the only place it is read from the device)."""
    if bar is None and on_epoch is None:
        return None

    def hook(runs: list[int], epoch: int, loss: torch.Tensor) -> None:
        if bar is not None:
            who = f"run {runs[0] + 1}" if len(runs) == 1 else f"runs {runs[0] + 1}–{runs[-1] + 1}"
            bar.advance(len(runs), f"{who}/{config.runs}, epoch {epoch}/{config.epochs}")
        if on_epoch is not None:
            on_epoch(runs, epoch, float(loss))

    return hook


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
    progress: bool = False,
    store: RunStore | None = None,
    on_epoch: Callable[[list[int], int, float], None] | None = None,
) -> ModelResult:
    """Train and test one architecture: {"mean", "std", "runs", "seconds"} (accuracies in %), and
    with `config.test_limit` N the same on the first N test images as "first". With `progress`, a
    bar on a terminal (one line per 30 s elsewhere) shows the run, the epoch and the time left.
    With `store`, each finished run is appended there at once, and the runs it already holds are
    reused, not trained again."""
    start = time.perf_counter()
    ref = ModelRef.parse(model)
    name = str(ref)
    done = store.done(name) if store is not None else {}
    accs = {r: float(done[r]["accuracy"]) for r in range(config.runs) if r in done}
    firsts = {r: done[r].get("first") for r in accs}
    todo = [r for r in range(config.runs) if r not in accs]
    if accs and store is not None:
        log.info("%s: %d of %d runs reused from %s", name, len(accs), config.runs, store.path)
    bar = Progress(name, len(todo) * config.epochs) if progress and todo else None
    hook = _epoch_hook(bar, on_epoch, config)
    train, test = (train_images, train_labels), (test_images, test_labels)
    for r, acc, first, seconds in train_runs(ref, todo, train, test, num_classes, config, hook):
        accs[r], firsts[r] = acc, first
        if store is not None:
            store.add(name, r, acc, first, seconds)
    n = min(config.test_limit, len(test_labels)) if config.test_limit else 0
    runs = [accs[r] for r in range(config.runs)]
    result: dict[str, Any] = dict(_accuracy(runs))
    if n:
        result["first"] = {"images": n} | _accuracy([float(firsts[r]) for r in range(config.runs)])
    seconds = time.perf_counter() - start
    summary = f"{np.mean(runs):.2f} ± {np.std(runs):.2f} % over {len(runs)} runs ({seconds:.1f} s)"
    log.info("%s: %s", name, summary)
    if bar is not None:
        bar.close(summary)
    return result | {"seconds": seconds, "options": ref.options_for(train_images.shape[-1])}


def _evaluate(
    kind: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    data: Dataset,
    models: str | Sequence[str | ModelRef],
    config: EvalConfig,
    out_dir: str | os.PathLike | None,
    progress: bool = False,
    set_key: str = "",
    on_epoch: EpochHook | None = None,
) -> EvalReport:
    start = time.perf_counter()
    refs = parse_models(models)  # every name and option checked before any work
    if not refs:
        raise AtomddError("no model to evaluate; name at least one (e.g. convnet)")
    size = data.image_size[0]
    for ref in refs:  # and each model on these images (a size past the memory bound)
        check_model(ref.name, data.channels, data.num_classes, size, **ref.options_for(size))
    device = init(config.device)  # joins torchrun's group, if it started this process
    precision = resolve_precision(config.precision, device)
    resolved = replace(config, precision=precision)
    test_x = test[0].to(device)  # preprocessed once, kept on the device for every model
    train_x = train[0].to(device)
    main = is_main_process()
    store = RunStore(out_dir, set_key, run_protocol_key(asdict(config), precision), write=main)
    if world_size() > 1:
        shard_runs(refs, (train_x, train[1]), (test_x, test[1]), data.num_classes, resolved, store)
        progress, on_epoch = False, None  # nothing is left to train
    results = {
        str(ref): run_protocol(
            ref,
            train_x,
            train[1],
            test_x,
            test[1],
            data.num_classes,
            resolved,
            progress,
            store,
            _hook(on_epoch, str(ref)),
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
    if out_dir is not None and main:
        try:
            merge_report(Path(out_dir) / RESULT_FILE, dict(report), set_key)  # other entries kept
        except WriteError as e:
            e.report = report  # computed all the same: the CLI prints it
            raise
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
    check_set_contents(syn, data.num_classes, data.name)


def check_set_contents(syn: SyntheticSet, num_classes: int, name: str) -> None:
    """Refuse a set that cannot give a meaningful score, before any model is trained: no images,
    non-finite pixels, labels out of range, a class without images, or a class holding another
    number of images than the set's recorded IPC (issue 17: 1)."""
    n = len(syn.labels)
    if n == 0:
        raise AtomddError("the set holds no images; nothing to train on")
    if not 0 <= int(syn.labels.min()) <= int(syn.labels.max()) < num_classes:
        raise AtomddError(
            f"the set's labels must lie in 0–{num_classes - 1} for {name}, found "
            f"{int(syn.labels.min())}–{int(syn.labels.max())}"
        )
    finite = torch.isfinite(syn.images)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum())
        raise AtomddError(
            f"{bad} of the set's {n} images hold NaN or infinite values; a model trained on them "
            "scores at chance. Re-make the set (a diverging distillation: lower lr_img)"
        )
    counts = torch.bincount(syn.labels, minlength=num_classes).tolist()
    if missing := [
        syn.classes[c] if c < len(syn.classes) else str(c) for c, k in enumerate(counts) if k == 0
    ]:
        raise AtomddError(
            f"the set has no image of class(es) {', '.join(map(repr, missing))} of {name}; every class "
            "needs at least one"
        )
    ipc = syn.meta.get("ipc")
    recorded = isinstance(ipc, int) and not isinstance(ipc, bool)
    if recorded and (off := {c: k for c, k in enumerate(counts) if k != ipc}):
        shown = ", ".join(f"class {c}: {k}" for c, k in list(off.items())[:5])
        raise AtomddError(
            f"the set records {ipc} images per class but holds another number for "
            f"{len(off)} class(es) ({shown}); it is damaged or was assembled by hand"
        )


def evaluate_set(
    syn: SyntheticSet,
    models: str | Sequence[str | ModelRef] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    dataset: Dataset | None = None,
    progress: bool = False,
    on_epoch: EpochHook | None = None,
) -> EvalReport:
    """Run the protocol for each architecture on `syn`; write `out_dir/eval.json` if given.

    The test images go through the set's own fitted preprocessing (normalisation, ZCA), once.
    Returns an `EvalReport` (accuracies in %). `progress`: show each model's training (`Progress`).
    """
    data = as_dataset(dataset if dataset is not None else syn.dataset, data_root)
    _check_set(syn, data)
    test_x = syn.preprocess()(data.test_images)
    kind = {"kind": "synthetic", "images": len(syn.labels), "ipc": syn.ipc}
    kind |= {k: syn.meta[k] for k in ("method", "source", "experiment") if k in syn.meta}
    key = set_id(
        syn.images, syn.labels, *syn.preprocess_tensors.values(), extra=json.dumps(syn.preprocess_meta)
    )
    train, test = (syn.images, syn.labels), (test_x, data.test_labels)
    with hold(out_dir):  # made, and this evaluation's alone, before any training
        return _evaluate(kind, train, test, data, models, config, out_dir, progress, key, on_epoch)


def evaluate_whole(
    dataset: str | Dataset,
    models: str | Sequence[str | ModelRef] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    zca: bool = False,
    progress: bool = False,
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
    key = set_id(extra=f"whole:{data.name}:{data.content_hash}:zca={zca}")
    with hold(out_dir):
        return _evaluate(kind, train, test, data, models, config, out_dir, progress, key, on_epoch)
