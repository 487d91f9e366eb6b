"""The (model, run) jobs of an evaluation: trained in the groups `train.py` stacks, and spread
over torchrun's ranks, whose results are gathered; a run's accuracy depends on its number alone
(its seeds), so where it ran does not change it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch

from atomdd import parallel, peers
from atomdd.hardware import resolve_device
from atomdd.models import ModelRef
from atomdd.results import RunStore
from atomdd.settings import EvalConfig
from atomdd.train import test_models, train_models, use_batched

Pair = tuple[torch.Tensor, torch.Tensor]


def train_runs(
    ref: ModelRef,
    todo: list[int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    config: EvalConfig,
    hook: Callable[[list[int], int, torch.Tensor], None] | None = None,
) -> Iterator[tuple[int, float, float | None, float]]:
    """(run, accuracy, accuracy on the first `test_limit` images, seconds) of each run in `todo`, as
    each group that trains together finishes."""
    n = min(config.test_limit, len(test[1])) if config.test_limit else 0
    batched = use_batched(config, resolve_device(config.device))
    size = (config.stack_size or len(todo)) if batched else 1
    for i in range(0, len(todo), max(size, 1)):  # the groups train_models would train together
        part, t0 = todo[i : i + size], time.perf_counter()
        models = train_models(ref, *train, num_classes, config, part, hook)
        got = test_models(models, *test, config)
        got_first = test_models(models, test[0][:n], test[1][:n], config) if n else [None] * len(part)
        seconds = (time.perf_counter() - t0) / len(part)
        yield from ((r, acc, first, seconds) for r, acc, first in zip(part, got, got_first, strict=True))


def shard_runs(
    refs: Sequence[ModelRef], train: Pair, test: Pair, num_classes: int, config: EvalConfig, store: RunStore
) -> None:
    """Under torchrun: the (model, run) jobs not yet in `store`, spread over the ranks, each rank's
    results gathered into every rank's `store` (eval.jsonl, written by the main process), where
    the usual assembly finds them. A run's result depends on its number alone, not on the rank.
    Each finished run reaches eval.jsonl at once (the other ranks' through `peers.Relay`), so a
    rank killed in its share loses no run that finished anywhere."""
    jobs = [(str(ref), r) for ref in refs for r in range(config.runs) if r not in store.done(str(ref))]
    mine = parallel.shard(jobs)
    rows: list[tuple] = []
    relay = peers.Relay()

    def keep(row: tuple) -> None:  # into `store` once (a row may come back in the gather)
        if row[1] not in store.done(row[0]):
            store.add(*row)

    with peers.reporting_failures():
        try:
            for ref in refs:
                todo = [r for name, r in mine if name == str(ref)]
                for row in train_runs(ref, todo, train, test, num_classes, config):
                    rows.append((str(ref), *row))
                    keep(rows[-1])
                    relay.send(rows[-1])
                    for sent in relay.receive():
                        keep(tuple(sent))
            gathered = parallel.gather_results(rows, "the evaluation's (model, run) jobs")
        finally:  # also when a rank failed, or a signal ends this one
            for sent in relay.receive():
                keep(tuple(sent))
    for got in gathered:
        for row in got:
            keep(row)
