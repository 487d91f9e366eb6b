"""Run folders read back: a distillation's run.json, an evaluation's eval.json or a coreset's set
file, grids of them (`ipc<N>/<method>-seed<S>/`, as `jobs.py` makes them), and the order methods
are shown in. What the report's tables (`reporting.py`) and figures (`plots.py`) are made from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atomdd.errors import AtomddError
from atomdd.io import NUMBER, Shape, mismatch

RUN_FILES = ("run.json", "eval.json", "synthetic.safetensors")
# what the report reads from run.json and eval.json, and its type (`io.mismatch`): a folder whose
# files do not fit is refused with the key at fault, not met by a traceback (issue 29: 7)
_GIT = ({"commit": str}, type(None))
RUN_RECORD = {
    "config?": {"dataset?": str, "method?": str, "ipc?": int, "seed?": int, "iterations?": int},
    "command?": str,
    "versions?": dict,
    "git?": _GIT,
    "wall_seconds?": NUMBER,
}
_ACCURACY = {"runs": [NUMBER], "mean": NUMBER, "std": NUMBER}
EVAL_RECORD = {
    "models": {"*": _ACCURACY | {"first?": {"runs": [NUMBER], "images": int}}},
    "config": {"epochs": int, "test_limit?": int},
    "set?": {"kind?": str, "ipc?": int, "method?": str},
    "dataset?": str,
    "device?": str,
    "seconds?": NUMBER,
    "versions?": dict,
    "git?": _GIT,
}
ORDER = ("random", "herding", "kcenter", "dm", "datadam", "atom-channel", "atom")


def method_order(label: str) -> tuple[int, str]:
    """The published tables' order: coresets, DM, DataDAM, ATOM; other labels after, by name."""
    return (ORDER.index(label) if label in ORDER else len(ORDER), label)


@dataclass
class Run:
    folder: Path
    label: str  # the method as its grid names it (folder name), else the run's method
    group: str  # the grid it belongs to, or "runs"
    run: dict  # run.json ({} for a coreset)
    evaluation: dict | None  # eval.json

    @property
    def dataset(self) -> str:
        return self.run.get("config", {}).get("dataset") or (self.evaluation or {}).get("dataset", "?")

    @property
    def ipc(self) -> int:
        ipc = self.run.get("config", {}).get("ipc") or (self.evaluation or {}).get("set", {}).get("ipc")
        return int(ipc) if ipc is not None else 0

    @property
    def seed(self) -> int:
        """The set's seed: run.json's, else the grid folder's `-seed<N>`, else 0."""
        if "seed" in self.run.get("config", {}):
            return int(self.run["config"]["seed"])
        suffix = self.folder.name.rpartition("-seed")[2]
        return int(suffix) if suffix.isdigit() else 0


@dataclass
class Group:
    name: str
    folder: Path | None
    runs: list[Run] = field(default_factory=list)


def read_record(path: Path, shape: Shape) -> dict:
    """A run's JSON record (run.json, eval.json), refused unless it fits `shape`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise AtomddError(f"{path} is not readable JSON: {e}") from None
    if why := mismatch(record, shape):
        raise AtomddError(f"{path} is not a record atomdd wrote ({why}); move it aside or remake it")
    return record


def is_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in RUN_FILES)


def load_run(folder: Path, group: str, label: str | None = None) -> Run:
    run = read_record(folder / "run.json", RUN_RECORD) if (folder / "run.json").exists() else {}
    ev = read_record(folder / "eval.json", EVAL_RECORD) if (folder / "eval.json").exists() else None
    if label is None and (ev or {}).get("set", {}).get("kind") == "whole":
        label = "whole dataset"  # `atomdd evaluate --whole`: the upper bound, in the IPC 0 column
    if label is None:
        label = run.get("config", {}).get("method") or (ev or {}).get("set", {}).get("method") or folder.name
    return Run(folder, label, group, run, ev)


def gather(paths: Sequence[str | Path]) -> tuple[list[Group], list[Path]]:
    """The groups of runs (each grid one group, loose runs one more) and the folders with nas.json."""
    groups: list[Group] = []
    loose = Group("runs", None)
    nas: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise AtomddError(f"{p} is not a folder: give run folders, grids or folders with nas.json")
        found = False
        if (p / "nas.json").exists():
            nas.append(p)
            found = True
        members = [f for f in sorted(p.glob("ipc*/*-seed*")) if f.is_dir() and is_run(f)]
        if members:
            grid = Group(p.name, p)
            grid.runs = [load_run(f, p.name, f.name.rpartition("-seed")[0]) for f in members]
            groups.append(grid)
        elif is_run(p):
            loose.runs.append(load_run(p, "runs"))
        elif not found:
            raise AtomddError(
                f"{p} is no run: it holds none of {', '.join(RUN_FILES)}, no ipc*/<method>-seed* run "
                "folders (a grid) and no nas.json"
            )
    if loose.runs:
        groups.append(loose)
    return groups, nas
