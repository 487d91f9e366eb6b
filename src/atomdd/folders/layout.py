"""What an output folder already holds, and the refusal to replace a different set or run there.

`atomdd coreset --out F` and `atomdd distill --out F` write a set (and a distillation its run files)
into F. A folder that holds another set or run is not replaced unless the caller says so
(`--overwrite`); then every file that described the old one goes, so none describes the new one
wrongly (issue 17: 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError

SET_FILE = "synthetic.safetensors"  # sets.FILENAME
RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.safetensors"
# the files that describe the set or run in a folder (a run's record, log, figures; an evaluation)
DESCRIBING = (RUN_FILE, "metrics.jsonl", CHECKPOINT, "grid.png", "attention.png", "eval.json", "eval.jsonl")


def set_meta(folder: Path) -> dict[str, Any] | None:
    """The metadata of the set in `folder` (its meta, its dataset and whether it is ZCA-whitened),
    None if there is none; {} if it cannot be read."""
    file = folder / SET_FILE
    if not file.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="numpy") as f:
            metadata = f.metadata() or {}
        meta = json.loads(metadata.get("meta", "{}"))
        prep = json.loads(metadata.get("preprocess", "{}"))
    except Exception:  # noqa: BLE001  (an unreadable set is still "a set")
        return {}
    zca = prep.get("zca") if isinstance(prep, dict) else None
    return (meta if isinstance(meta, dict) else {}) | {"dataset": metadata.get("dataset"), "zca": zca}


def describe(folder: str | Path) -> str | None:
    """What `folder` holds, in words: a (distillation) run, a set, a checkpoint; None if nothing."""
    folder = Path(folder)
    run = folder / RUN_FILE
    if run.is_file():
        try:
            record = json.loads(run.read_text())
            cfg = record.get("config") or {}
            what = (
                f"{cfg.get('method')} on {cfg.get('dataset')}, ipc {cfg.get('ipc')}, seed {cfg.get('seed')}"
            )
            return f"a run (distillation: {what}; {record.get('status')} at step {record.get('step')})"
        except Exception:  # noqa: BLE001
            return "a run (distillation; its run.json is unreadable)"
    meta = set_meta(folder)
    if meta is not None:
        keys = ("method", "dataset", "ipc", "seed")
        what = ", ".join(f"{k} {meta[k]}" for k in keys if meta.get(k) is not None)
        kind = meta.get("kind", "distilled" if "steps" in meta else "")
        return f"a {kind + ' ' if kind else ''}set ({what or 'unreadable metadata'})"
    if (folder / CHECKPOINT).is_file():
        return "a distillation checkpoint"
    return None


def claim(folder: str | Path, overwrite: bool, same: dict[str, Any] | None = None, flag: str = "--overwrite"):
    """Make `folder` ready for a new set: refuse if it holds another set or run (unless `overwrite`,
    which removes the old one's files). A set whose metadata agrees with `same` on each of its keys,
    without a run record, is the same set: writing it again is allowed (it gives the same bytes)."""
    folder = Path(folder)
    there = describe(folder)
    if there is None:
        return
    if same is not None and not (folder / RUN_FILE).exists():
        meta = set_meta(folder) or {}
        if all(meta.get(k) == v for k, v in same.items()):
            return
    if not overwrite:
        raise AtomddError(
            f"{folder} already holds {there}; pass {flag} to replace it, or choose another --out"
        )
    from atomdd.parallel import is_main_process

    if is_main_process():  # under torchrun, the one process that writes
        remove_described(folder)


def remove_described(folder: str | Path) -> None:
    """Remove the set and every file that described it (before a different set is written)."""
    folder = Path(folder)
    for name in (SET_FILE, *DESCRIBING):
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as e:
            raise AtomddError(f"cannot remove {folder / name} to replace it: {e.strerror}") from None
