"""The one writer of a distillation run's folder: run.json, metrics.jsonl, the checkpoint and the set
(the figures are the caller's, drawn from these files). Every write is the main process's alone
(`parallel.is_main_process`); under torchrun the other ranks write nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from atomdd.errors import AtomddError
from atomdd.folders.layout import (
    CHECKPOINT,
    METRICS,
    METRICS_ROW,
    RUN_FILE,
    SET_FILE,
    describe,
    remove_described,
)
from atomdd.io import (
    append_jsonl,
    make_folder,
    read_jsonl,
    save_safetensors,
    write_bytes,
    write_error,
    write_json,
)
from atomdd.parallel import is_main_process

if TYPE_CHECKING:
    import torch

    from atomdd.sets import SyntheticSet


class Checkpoint(NamedTuple):
    path: Path
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]  # the run's config, as `asdict` gave it (either run.json format)
    step: int  # steps done
    wall_seconds: float  # seconds worked before it, over every resume
    data_hash: str | None  # the content hash of the data it distils


class RunFolder:
    """The files of one run, each written through here and only by the main process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.main = is_main_process()

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def start(self, overwrite: bool = False) -> None:
        """Begin a fresh run here: refuse a folder holding another set or a run's checkpoint (a
        failed run's record alone is replaced), unless `overwrite`."""
        if self.has_checkpoint() or (self.path / SET_FILE).exists():
            if not overwrite:
                cont = "--resume to continue it, " if self.has_checkpoint() else ""
                raise AtomddError(
                    f"{self.path} already holds {describe(self.path)}; pass {cont}--overwrite to replace "
                    "it, or use another --out"
                )
            if self.main:
                remove_described(self.path)
        if self.main:
            make_folder(self.path)
            _remove(self.path / METRICS)

    def record(self, run: dict[str, Any]) -> None:
        if self.main:
            write_json(self.path / RUN_FILE, run)

    def done_at(self, step: int) -> bool:
        """Whether run.json records this run finished at `step`: a resume with nothing left to do
        keeps that record (the time, memory, command and commit that made the set) instead of
        writing its own over it."""
        try:
            run = json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(run, dict) and run.get("status") == "done" and run.get("step") == step

    def log(self, row: dict[str, Any]) -> None:
        if self.main:
            append_jsonl(self.path / METRICS, row)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint, so a resumed run's log reads as one run."""
        path = self.path / METRICS
        if self.main and path.exists():
            rows = [r for r in read_jsonl(path, METRICS_ROW) if r["step"] <= step]
            write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def loss_summary(self) -> dict[str, float]:
        """The first, last and lowest logged loss, and how many rows were logged."""
        rows = read_jsonl(self.path / METRICS, METRICS_ROW) if (self.path / METRICS).exists() else []
        if not rows:
            return {}
        losses = [r["loss"] for r in rows]
        return {"first": losses[0], "last": losses[-1], "min": min(losses), "logged": len(rows)}

    def checkpoint(
        self, tensors: dict[str, torch.Tensor], step: int, wall_seconds: float, config: dict, data_hash: str
    ) -> None:
        """The run's state after `step` steps: its tensors, the seconds worked so far, its config
        and the hash of the data it distils."""
        if self.main:
            meta = {
                "step": str(step),
                "wall_seconds": repr(wall_seconds),
                "config": json.dumps(config),
                "dataset_hash": data_hash,
            }
            save_safetensors(self.path / CHECKPOINT, tensors, meta)

    def read_checkpoint(self) -> Checkpoint:
        """What `checkpoint` wrote; a missing or corrupt file is a clear error."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = self.path / CHECKPOINT
        if not path.exists():
            raise AtomddError(f"--resume: no checkpoint at {path}; run without --resume to start fresh")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            config = json.loads(meta["config"])
            step = int(meta["step"])
            wall = float(meta.get("wall_seconds", "0"))
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise AtomddError(f"checkpoint {path} is corrupt or not an atomdd checkpoint: {e}") from None
        wall = wall if math.isfinite(wall) and wall >= 0 else 0.0
        return Checkpoint(path, tensors, config, step, wall, meta.get("dataset_hash"))

    def save_set(self, result: SyntheticSet) -> None:
        if self.main:
            result.save(self.path)


def _remove(path: Path) -> None:
    """Remove an earlier run's file, if there is one (an empty read-only folder has none to remove)."""
    if os.path.lexists(path):
        try:
            path.unlink()
        except OSError as e:
            raise write_error(path, e) from None
