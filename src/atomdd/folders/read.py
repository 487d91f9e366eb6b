"""Folders read back: a distillation's run.json, an evaluation's eval.json, a coreset's set file,
and grids of them (`ipc<N>/<method>-seed<S>/`, as `atomdd grid` makes them). What the report's
tables and figures are made from; JSON and file names only, no torch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atomdd.errors import AtomddError
from atomdd.folders.layout import EVAL_FILE, GRID_MEMBERS, NAS_SUMMARY, RECORDS, RUN_FILE, member_parts
from atomdd.io import NUMBER, Shape, mismatch

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
_ACCURACY = {"runs": [NUMBER], "mean": NUMBER, "std": NUMBER}  # "runs": the repeats' accuracies
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


@dataclass
class Folder:
    """One folder of results: a distillation run, a coreset or a whole-data evaluation."""

    path: Path
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
        seed = member_parts(self.path)[2]
        return seed if seed is not None else 0


@dataclass
class Group:
    """A grid's folders, or the loose ones given (`folder` None)."""

    name: str
    folder: Path | None
    members: list[Folder] = field(default_factory=list)


def read_record(path: Path, shape: Shape) -> dict:
    """A run's JSON record (run.json, eval.json), refused unless it fits `shape`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise AtomddError(f"{path} is not readable JSON: {e}") from None
    if why := mismatch(record, shape):
        raise AtomddError(f"{path} is not a record atomdd wrote ({why}); move it aside or remake it")
    return record


def holds_results(folder: Path) -> bool:
    return any((folder / f).exists() for f in RECORDS)


def read_folder(folder: Path, group: str, label: str | None = None) -> Folder:
    run = read_record(folder / RUN_FILE, RUN_RECORD) if (folder / RUN_FILE).exists() else {}
    ev = read_record(folder / EVAL_FILE, EVAL_RECORD) if (folder / EVAL_FILE).exists() else None
    if label is None and (ev or {}).get("set", {}).get("kind") == "whole":
        label = "whole dataset"  # `atomdd evaluate --whole`: the upper bound, in the IPC 0 column
    if label is None:
        label = run.get("config", {}).get("method") or (ev or {}).get("set", {}).get("method") or folder.name
    return Folder(folder, label, group, run, ev)


def gather(paths: Sequence[str | Path]) -> tuple[list[Group], list[Path]]:
    """The groups of folders (each grid one group, loose folders one more) and the folders with
    an architecture search's nas.json."""
    groups: list[Group] = []
    loose = Group("runs", None)
    nas: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise AtomddError(f"{p} is not a folder: give run folders, grids or folders with nas.json")
        found = False
        if (p / NAS_SUMMARY).exists():
            nas.append(p)
            found = True
        members = [f for f in sorted(p.glob(GRID_MEMBERS)) if f.is_dir() and holds_results(f)]
        if members:
            grid = Group(p.name, p)
            grid.members = [read_folder(f, p.name, member_parts(f)[0]) for f in members]
            groups.append(grid)
        elif holds_results(p):
            loose.members.append(read_folder(p, "runs"))
        elif not found:
            raise AtomddError(
                f"{p} is no run: it holds none of {', '.join(RECORDS)}, no ipc*/<method>-seed* run "
                "folders (a grid) and no nas.json"
            )
    if loose.members:
        groups.append(loose)
    return groups, nas
