"""The evaluation protocol: train fresh models on a set, test them on the real test set.

DM's protocol (docs/method.md): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr ×0.1
at half the epochs, DSA on every training batch, 1 000 epochs, accuracy (%) as mean ± std over the
models trained (std with ddof 0, as the published code's `np.std`). Each architecture is trained
`repeats` times, 5 by default, not the published 10–20: on a CPU each costs minutes, and
`repeats=20` reproduces the published count exactly.
Three small, documented differences from DM's `evaluate_synset`: it trains `epochs + 1` epochs and
resets the momentum when the lr drops (it rebuilds the optimiser), and its DSA draws one operation
per batch with per-sample magnitudes; here it is `epochs` epochs, momentum kept, and one operation
per sample (`augment`'s per-sample draws).

The models are trained and tested by `train.py` (N repeats at once, stacked under vmap on CUDA),
in the groups it stacks, and under torchrun spread over the ranks as (model, repeat) jobs whose
results are gathered: a repeat's accuracy depends on its number alone (its seeds), so where it ran
does not change it. Finished repeats are kept in eval.jsonl and reused (`folders.evals`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from atomdd import parallel, peers, pool
from atomdd.data import Dataset, as_dataset
from atomdd.errors import AtomddError, WriteError
from atomdd.folders.evals import RepeatStore, merge_result, repeat_protocol_key, set_id
from atomdd.folders.layout import EVAL_FILE
from atomdd.hardware import resolve_device, resolve_precision
from atomdd.io import versions
from atomdd.lock import hold
from atomdd.models import ModelRef, check_model, create_model, has_batch_norm, parse_models
from atomdd.progress import Progress, silenced, stage
from atomdd.provenance import git_state
from atomdd.sets import SyntheticSet
from atomdd.settings import EvalConfig
from atomdd.train import Teacher, test_models, train_models, use_batched

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "ModelResult", "evaluate_model", "evaluate_set", "evaluate_whole"]

Pair = tuple[torch.Tensor, torch.Tensor]


class Accuracy(TypedDict):
    mean: float
    std: float
    runs: list[float]  # each repeat's accuracy (the key eval.json has always used)


class FirstAccuracy(Accuracy):
    images: int


class _ModelResultBase(Accuracy):
    seconds: float
    options: dict[str, Any]


class ModelResult(_ModelResultBase, total=False):
    """One architecture's result: accuracies in %, std with ddof 0; "first" with `test_limit`;
    "reused": how many repeats came from eval.jsonl rather than training (`seconds` is this call's)."""

    first: FirstAccuracy
    reused: int


class EvalResult(TypedDict):
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


# on_epoch(model, repeats, epoch, loss): each epoch's mean training loss of the repeats trained together
EpochHook = Callable[[str, list[int], int, float], None]


def _hook(on_epoch: EpochHook | None, model: str) -> Callable[[list[int], int, float], None] | None:
    return partial(on_epoch, model) if on_epoch is not None else None


def _epoch_hook(
    bar: Progress | None, on_epoch: Callable[[list[int], int, float], None] | None, config: EvalConfig
) -> Callable[[list[int], int, torch.Tensor], None] | None:
    """train_models' per-epoch hook: advance the bar ("repeats 1–5/5, epoch 3/300") and pass the
    epoch's mean loss on (the only place it is read from the device)."""
    if bar is None and on_epoch is None:
        return None

    def hook(repeats: list[int], epoch: int, loss: torch.Tensor) -> None:
        if bar is not None:
            first, last = repeats[0] + 1, repeats[-1] + 1
            who = f"repeat {first}" if len(repeats) == 1 else f"repeats {first}–{last}"
            bar.advance(len(repeats), f"{who}/{config.repeats}, epoch {epoch}/{config.epochs}")
        if on_epoch is not None:
            on_epoch(repeats, epoch, float(loss))

    return hook


def _accuracy(accs: list[float]) -> Accuracy:
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs}


def train_repeats(
    ref: ModelRef,
    todo: list[int],
    train: Pair,
    test: Pair,
    num_classes: int,
    config: EvalConfig,
    hook: Callable[[list[int], int, torch.Tensor], None] | None = None,
    note: Callable[[str], None] | None = None,
    teacher: Teacher | None = None,
) -> Iterator[tuple[int, float, float | None, float]]:
    """(repeat, accuracy, accuracy on the first `test_limit` images, seconds) of each repeat in
    `todo`, as each group that trains together finishes; `note` is told when a test pass starts
    (minutes on a CPU for a large test set); `teacher`: its soft labels replace the labels."""
    n = min(config.test_limit, len(test[1])) if config.test_limit else 0
    batched = use_batched(config, resolve_device(config.device))
    size = (config.stack_size or len(todo)) if batched else 1
    for i in range(0, len(todo), max(size, 1)):  # the groups train_models would train together
        part, t0 = todo[i : i + size], time.perf_counter()
        models = train_models(ref, *train, num_classes, config, part, hook, teacher=teacher)
        if note is not None:
            who = f"repeat {part[0] + 1}" if len(part) == 1 else f"repeats {part[0] + 1}–{part[-1] + 1}"
            note(f"testing {who}/{config.repeats} on {len(test[1])} test images")
        got = test_models(models, *test, config)
        got_first = test_models(models, test[0][:n], test[1][:n], config) if n else [None] * len(part)
        seconds = (time.perf_counter() - t0) / len(part)
        yield from ((r, acc, first, seconds) for r, acc, first in zip(part, got, got_first, strict=True))


def shard_repeats(
    refs: Sequence[ModelRef],
    train: Pair,
    test: Pair,
    num_classes: int,
    config: EvalConfig,
    store: RepeatStore,
    teacher: Teacher | None = None,
) -> None:
    """Under torchrun: the (model, repeat) jobs not yet in `store`, spread over the ranks, each
    rank's results gathered into every rank's `store` (eval.jsonl, written by the main process),
    where the usual assembly finds them. Each finished repeat reaches eval.jsonl at once (the other
    ranks' through `peers.Relay`), so a rank killed in its share loses none that finished anywhere."""
    jobs = [(str(ref), r) for ref in refs for r in range(config.repeats) if r not in store.done(str(ref))]
    mine = parallel.shard(jobs)
    rows: list[tuple] = []
    relay = peers.Relay()

    def keep(row: tuple) -> None:  # into `store` once (a row may come back in the gather)
        if row[1] not in store.done(row[0]):
            store.add(*row)

    bar = Progress("evaluate (this rank's share)", len(mine) * config.epochs)
    hook = _epoch_hook(bar, None, config)
    with peers.reporting_failures(), bar:
        try:
            for ref in refs:
                todo = [r for name, r in mine if name == str(ref)]
                for row in train_repeats(
                    ref, todo, train, test, num_classes, config, hook, bar.note, teacher
                ):
                    rows.append((str(ref), *row))
                    keep(rows[-1])
                    relay.send(rows[-1])
                    for sent in relay.receive():
                        keep(tuple(sent))
            gathered = parallel.gather_results(rows, "the evaluation's (model, repeat) jobs")
        finally:  # also when a rank failed, or a signal ends this one
            for sent in relay.receive():
                keep(tuple(sent))
    for got in gathered:
        for row in got:
            keep(row)


def evaluate_model(
    model: str | ModelRef,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    config: EvalConfig = EvalConfig(),
    progress: bool = False,
    store: RepeatStore | None = None,
    on_epoch: Callable[[list[int], int, float], None] | None = None,
    teacher: Teacher | None = None,
) -> ModelResult:
    """Train and test one architecture `config.repeats` times: {"mean", "std", "runs" (each
    repeat's accuracy), "seconds"} (accuracies in %), and with `config.test_limit` N the same on
    the first N test images as "first". With `progress`, a bar on a terminal (one line per 30 s
    elsewhere) shows the repeat, the epoch, the test passes and the time left. With `store`, each
    finished repeat is appended there at once, and the repeats it already holds are reused, not
    trained again ("reused" counts them). `teacher`: the soft labels of `config.teacher`, loaded
    (`_teacher`)."""
    start = time.perf_counter()
    ref = ModelRef.parse(model)
    name = str(ref)
    done = store.done(name) if store is not None else {}
    accs = {r: float(done[r]["accuracy"]) for r in range(config.repeats) if r in done}
    firsts = {r: done[r].get("first") for r in accs}
    todo = [r for r in range(config.repeats) if r not in accs]
    if accs and store is not None:
        log.info("%s: %d of %d repeats reused from %s", name, len(accs), config.repeats, store.path)
    what = f"{len(todo)} model{'s' if len(todo) > 1 else ''} × {config.epochs} epochs"
    bar = Progress(name, len(todo) * config.epochs, shown=progress, what=what) if todo else None
    hook = _epoch_hook(bar, on_epoch, config)
    note = bar.note if bar is not None else None
    train, test = (train_images, train_labels), (test_images, test_labels)
    for r, acc, first, seconds in train_repeats(
        ref, todo, train, test, num_classes, config, hook, note, teacher
    ):
        accs[r], firsts[r] = acc, first
        if store is not None:
            store.add(name, r, acc, first, seconds)
    n = min(config.test_limit, len(test_labels)) if config.test_limit else 0
    each = [accs[r] for r in range(config.repeats)]
    result: dict[str, Any] = dict(_accuracy(each))
    if n:
        result["first"] = {"images": n} | _accuracy([float(firsts[r]) for r in range(config.repeats)])
    seconds = time.perf_counter() - start
    summary = f"{np.mean(each):.2f} ± {np.std(each):.2f} % over {len(each)} models ({seconds:.1f} s)"
    log.info("%s: %s", name, summary)
    if bar is not None:
        bar.close(summary)
    reused = config.repeats - len(todo)
    options = ref.options_for(train_images.shape[-1])
    return result | {"seconds": seconds, "options": options} | ({"reused": reused} if reused else {})


def _evaluate(
    kind: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    data: Dataset,
    models: str | Sequence[str | ModelRef],
    config: EvalConfig,
    out_dir: str | os.PathLike | None,
    set_key: str = "",
    on_epoch: EpochHook | None = None,
    zca: bool = False,
) -> EvalResult:
    start = time.perf_counter()
    refs = parse_models(models)  # every name and option checked before any work
    if not refs:
        raise AtomddError("no model to evaluate; name at least one (e.g. convnet)")
    size = data.image_size[0]
    for ref in refs:  # and each model on these images (a size past the memory bound)
        check_model(ref.name, data.channels, data.num_classes, size, **ref.options_for(size))
    warn_few_steps(len(train[1]), config)
    warn_batch_norm_scale(refs, train[0], test[0], data)
    device = parallel.init(config.device)  # joins torchrun's group, if it started this process
    precision = resolve_precision(config.precision, device)
    config, teacher = _teacher(config, data, zca, device)
    resolved = replace(config, precision=precision)
    test_x = test[0].to(device)  # preprocessed once, kept on the device for every model
    train_x = train[0].to(device)
    main = parallel.is_main_process()
    store = RepeatStore(out_dir, set_key, repeat_protocol_key(asdict(config), precision), write=main)
    if parallel.world_size() > 1:
        shard_repeats(
            refs, (train_x, train[1]), (test_x, test[1]), data.num_classes, resolved, store, teacher
        )
        on_epoch = None  # nothing is left to train
    results = {
        str(ref): evaluate_model(
            ref,
            train_x,
            train[1],
            test_x,
            test[1],
            data.num_classes,
            resolved,
            True,  # shown unless silenced (the callers' `progress`)
            store,
            _hook(on_epoch, str(ref)),
            teacher,
        )
        for ref in refs
    }
    result: EvalResult = {
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
            merge_result(Path(out_dir) / EVAL_FILE, dict(result), set_key)  # other entries kept
        except WriteError as e:
            e.result = result  # computed all the same: the CLI prints it
            raise
    return result


def _teacher(
    config: EvalConfig, data: Dataset, zca: bool, device: torch.device
) -> tuple[EvalConfig, Teacher | None]:
    """The teacher `config.teacher` names, loaded on `device` and checked against the data and its
    preprocessing, and the config with the teacher as `folder@<weights sha256, 16 hex>`: what the
    protocol key and eval.json hold, so results of another teacher are never reused."""
    if not config.teacher:
        return config, None
    folder = Path(config.teacher).resolve()
    model, digest = pool.teacher(folder, data, zca)
    teacher = Teacher(model.to(device), config.teacher_temperature)
    return replace(config, teacher=f"{folder}@{digest[:16]}"), teacher


# fewer SGD steps than this in a whole training, and the epochs say little about the set: the
# published protocol takes 1 000 (1 000 epochs of at most 256 images)
FEW_STEPS = 300


def warn_few_steps(images: int, config: EvalConfig) -> None:
    """Say so when `config.epochs` over `images` training images amount to few SGD steps: a small
    set at batch 256 takes one step an epoch, so 100 epochs are 100 steps."""
    per_epoch = math.ceil(images / config.batch_size)
    if per_epoch * config.epochs < FEW_STEPS and parallel.is_main_process():
        log.warning(
            "evaluate: %d epochs of %d images at batch %d are %d SGD steps in all (%d an epoch); "
            "models may be undertrained (the published protocol: 1 000 epochs). Raise --epochs, or "
            "lower --batch-size",
            config.epochs,
            images,
            config.batch_size,
            per_epoch * config.epochs,
            per_epoch,
        )


# a set's pixel spread this many times the test images' (or less than 1/this) makes a batch-norm
# model's test pass measure the mismatch: at 8.8× the DataDAM code's set scored 15 % (32 % rescaled),
# at 2.7× (its code without ZCA) the batch-norm evaluation worked (docs/reproduce.md)
BN_SCALE_RATIO = 3.0


def warn_batch_norm_scale(
    refs: Sequence[ModelRef], train: torch.Tensor, test: torch.Tensor, data: Dataset
) -> None:
    """Say so when a batch-norm model is to be tested on images whose spread is far from that of
    the images it trains on: in eval mode it normalises the test images with the training images'
    running statistics (docs/reproduce.md, where the DataDAM code's sets sit at 9–20× the test
    images' spread); an instance-norm model normalises each image by itself and is unaffected."""
    if not parallel.is_main_process():
        return
    size = data.image_size[0]
    with torch.device("meta"):  # built without memory, only to look at its layers
        batch_norm = [
            ref
            for ref in refs
            if has_batch_norm(
                create_model(ref.name, data.channels, data.num_classes, size, **ref.options_for(size))
            )
        ]
    if not batch_norm:
        return
    train_std, test_std = float(train.std()), float(test.std())
    ratio = train_std / max(test_std, 1e-12)
    if 1 / BN_SCALE_RATIO <= ratio <= BN_SCALE_RATIO:
        return
    for ref in batch_norm:
        log.warning(
            "evaluate: the training images' pixels spread %.1f× as wide as the test images' (std "
            "%.3g against %.3g); %s has batch norm, which tests with the statistics of the images "
            "it trained on, so its accuracy measures that mismatch as much as the set "
            "(docs/reproduce.md). An instance-norm model (convnet) is not affected",
            ratio,
            train_std,
            test_std,
            ref,
        )


def check_set(syn: SyntheticSet, data: Dataset) -> None:
    """Refuse a set made from other data, of another image shape, or whose contents cannot give
    a meaningful score (`check_set_contents`)."""
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
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> EvalResult:
    """Run the protocol for each architecture on `syn`; write `out_dir/eval.json` if given.

    The test images go through the set's own fitted preprocessing (normalisation, ZCA), once.
    Returns an `EvalResult` (accuracies in %). `progress`: show the loading, each model's training
    and its test passes (`progress.Progress`; on stderr).
    """
    with silenced(not progress):
        data = _load("evaluate", dataset if dataset is not None else syn.dataset, data_root)
        check_set(syn, data)
        with stage(
            "evaluate", "preprocessing the test images" + (" (ZCA)" if syn.preprocess_meta.get("zca") else "")
        ):
            test_x = syn.preprocess()(data.test_images)
    train = syn.decoded()  # a factor set trains on its decoded images
    kind = {"kind": "synthetic", "images": len(syn.labels), "ipc": syn.ipc}
    if syn.factor != 1:
        kind |= {"factor": syn.factor, "decoded_images": len(train[1])}
    kind |= {k: syn.meta[k] for k in ("method", "source", "experiment") if k in syn.meta}
    extra = json.dumps(syn.preprocess_meta) + (f",factor={syn.factor}" if syn.factor != 1 else "")
    key = set_id(syn.images, syn.labels, *syn.preprocess_tensors.values(), extra=extra)
    test = (test_x, data.test_labels)
    zca = bool(syn.preprocess_meta.get("zca"))
    with hold(out_dir), silenced(not progress):  # made, and this evaluation's alone, before any training
        return _evaluate(kind, train, test, data, models, config, out_dir, key, on_epoch, zca)


def evaluate_whole(
    dataset: str | Dataset,
    models: str | Sequence[str | ModelRef] = ("convnet",),
    config: EvalConfig = EvalConfig(),
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    zca: bool = False,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> EvalResult:
    """The upper bound: the same protocol on the full train set (preprocessing fitted on it).

    Mind `config.epochs`: the default 1 000 is meant for a few hundred images, not 50 000.
    """
    with silenced(not progress):
        data = _load("evaluate", dataset, data_root)
        with stage(
            "evaluate", "fitting ZCA and preprocessing the images" if zca else "preprocessing the images"
        ):
            prep = data.preprocess(zca)
            train = (prep(data.train_images), data.train_labels)
            test = (prep(data.test_images), data.test_labels)
    kind = {"kind": "whole", "images": len(data.train_labels), "zca": zca}
    key = set_id(extra=f"whole:{data.name}:{data.content_hash}:zca={zca}")
    with hold(out_dir), silenced(not progress):
        return _evaluate(kind, train, test, data, models, config, out_dir, key, on_epoch, zca)


def _load(label: str, dataset: str | Dataset, data_root: str | os.PathLike | None) -> Dataset:
    """`as_dataset`, its loading shown under `label` (seconds to a minute for CIFAR or an image folder)."""
    if not isinstance(dataset, str):
        return dataset
    with stage(label, f"loading {dataset}"):
        return as_dataset(dataset, data_root)
