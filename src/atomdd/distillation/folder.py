"""The files of one distillation run (run.json, metrics.jsonl, the checkpoint, the set and its
figures), each written only by the main process (`parallel.is_main_process`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from atomdd.data import Dataset
from atomdd.errors import AtomddError
from atomdd.io import (
    NUMBER,
    append_jsonl,
    make_folder,
    read_jsonl,
    save_safetensors,
    write_bytes,
    write_error,
    write_json,
)
from atomdd.parallel import is_main_process
from atomdd.sets import SyntheticSet

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
RUN_FILE = "run.json"
METRICS_ROW = {"step": int, "loss": NUMBER}  # a metrics.jsonl row: what the summaries and plots read


class RunFolder:
    """The files of one run, each written through here and only by the main process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.main = is_main_process()

    def start(self, overwrite: bool = False) -> None:
        """Begin a fresh run here: refuse a folder holding another set or a run's checkpoint (a
        failed run's record alone is replaced), unless `overwrite`."""
        from atomdd.outputs import SET_FILE, describe, remove_described

        if (self.path / CHECKPOINT).exists() or (self.path / SET_FILE).exists():
            if not overwrite:
                cont = "--resume to continue it, " if (self.path / CHECKPOINT).exists() else ""
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

    def log(self, row: dict[str, Any]) -> None:
        if self.main:
            append_jsonl(self.path / METRICS, row)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint, so a resumed run's log reads as one run."""
        path = self.path / METRICS
        if self.main and path.exists():
            rows = [r for r in read_jsonl(path, METRICS_ROW) if r["step"] <= step]
            write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if self.main:
            save_safetensors(self.path / CHECKPOINT, tensors, meta)

    def save_set(self, result: SyntheticSet) -> None:
        if self.main:
            result.save(self.path)

    def figures(self, data: Dataset | None = None) -> None:
        """grid.png and attention.png, drawn from the folder's files (run.json, the set)."""
        if self.main:
            from atomdd.report import save_run_figures

            save_run_figures(self.path, data)


def _remove(path: Path) -> None:
    """Remove an earlier run's file, if there is one (an empty read-only folder has none to remove)."""
    if os.path.lexists(path):
        try:
            path.unlink()
        except OSError as e:
            raise write_error(path, e) from None


def loss_summary(out: Path) -> dict[str, float]:
    rows = read_jsonl(out / METRICS, METRICS_ROW) if (out / METRICS).exists() else []
    if not rows:
        return {}
    losses = [r["loss"] for r in rows]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "logged": len(rows)}
