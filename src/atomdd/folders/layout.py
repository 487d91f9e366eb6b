"""The on-disk contract: every file name a run, set, evaluation, grid or search folder holds, in one
place, and the rule for replacing what a folder already holds (`--overwrite`). No torch.

- a **set** folder: `synthetic.safetensors` (`atomdd coreset`, or a distillation's result);
- a **run** folder (a distillation) adds `run.json` (its record; "done" is written last),
  `metrics.jsonl` (the loss every `log_every` steps), `checkpoint.safetensors`, and the figures
  `grid.png` and `attention.png`;
- an **evaluation** adds `eval.jsonl` (one line per trained model, reused on rerun) and `eval.json`
  (the results by protocol and model), beside the set it evaluated or in a folder of its own;
- a **grid** is a folder of set folders named `ipc<IPC>/<method>-seed<SEED>/` and `accuracy.json`
  (its table's numbers);
- a **pool** of trained networks (`atomdd pool`) is `pool.json` (its record) and `pool.safetensors`
  (the weights at epoch 0 and at each snapshot epoch);
- an architecture **search** writes `settings.json`, `results.jsonl`, `nas.json`, `nas.png` and a
  `truth/` cache of whole-data results.

`atomdd coreset --out F` and `atomdd distill --out F` write a set (and a distillation its run files)
into F. A folder that holds another set or run is not replaced unless the caller says so
(`--overwrite`); then every file that described the old one goes, so none describes the new one
wrongly (issue 17: 2). docs/formats.md describes what each file holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError
from atomdd.io import NUMBER

SET_FILE = "synthetic.safetensors"
RUN_FILE = "run.json"
METRICS = "metrics.jsonl"
METRICS_ROW = {"step": int, "loss": NUMBER}  # a metrics.jsonl row: what the summaries and plots read
CHECKPOINT = "checkpoint.safetensors"
LOCK_FILE = ".atomdd.lock"  # lock.hold: which process writes the folder
GRID_PNG = "grid.png"
ATTENTION_PNG = "attention.png"
SHOW_PNG = "show.png"  # `atomdd show`'s default, beside the set
FIGURE_FORMATS = ("png", "pdf", "svg")  # a figure on request: PNG, or vector PDF / SVG
EVAL_FILE = "eval.json"
EVAL_ROWS = "eval.jsonl"
# an architecture search's folder
NAS_SETTINGS, NAS_RESULTS, NAS_SUMMARY, NAS_PLOT, NAS_TRUTH = (
    "settings.json",
    "results.jsonl",
    "nas.json",
    "nas.png",
    "truth",
)
# a pool of trained networks
POOL_RECORD, POOL_WEIGHTS = "pool.json", "pool.safetensors"
# the files that describe the set or run in a folder (a run's record, log, figures; an evaluation)
DESCRIBING = (RUN_FILE, METRICS, CHECKPOINT, GRID_PNG, ATTENTION_PNG, EVAL_FILE, EVAL_ROWS)
# what makes a folder a run, a set or an evaluation to read back (`folders.read`)
RECORDS = (RUN_FILE, EVAL_FILE, SET_FILE)

# a grid's member folders: ipc<IPC>/<label>-seed<SEED>; beside them, the numbers of its table
GRID_MEMBERS = "ipc*/*-seed*"
GRID_SUMMARY = "accuracy.json"


def safe_name(text: str) -> str:
    """`text` as a file name: every run of other characters than letters, digits, `.`, `_` and `-`
    one `_` (a grid's method spec `atom[embedding=0.01]` → `atom_embedding_0.01`)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_")


def grid_member(grid: str | Path, spec: str, ipc: int, seed: int) -> Path:
    """The folder of one (method spec, IPC, seed) of a grid."""
    return Path(grid) / f"ipc{ipc}" / f"{safe_name(spec)}-seed{seed}"


def member_parts(folder: Path) -> tuple[str, int | None, int | None]:
    """(label, IPC, seed) a grid member's path names; None where a number does not parse."""
    label, _, seed = folder.name.rpartition("-seed")
    ipc = folder.parent.name.removeprefix("ipc")
    return label, int(ipc) if ipc.isdigit() else None, int(seed) if seed.isdigit() else None


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
