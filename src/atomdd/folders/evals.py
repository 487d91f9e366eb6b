"""Where evaluation results are kept so that none is lost and none overwrites another (issue 17: 4).

An evaluation trains `repeats` fresh models per architecture; repeat r starts from the same weights
and augmentation draws on every set (its seeds depend on r alone).

- `eval.jsonl` (beside the set): one line per finished (model, repeat), appended as soon as it is
  tested. A rerun of the same evaluation reuses every repeat found there for the same set and
  protocol and trains only the missing ones, so a kill, a crash or a full disk loses at most the
  models in training.
- `eval.json`: the latest result at the top level (its "models" hold every model evaluated under
  the latest protocol), and under "results" every (protocol, model reference) ever evaluated there;
  a new evaluation replaces only the entries of its own protocol and models.

A protocol is the settings that decide the accuracies (not the device, the stacking or the test
batch). Settings that joined it later (CutMix, a teacher) enter its key only where they differ
from their defaults, so a hard-label key is the one it always was and its old rows are reused,
while a result under those options is kept apart from it. The JSON keys are those files have always
used: a row's repeat number is "run", a model's accuracies are its "runs", and a protocol key ends in
`runs=N`, so files written before the setting was called `repeats` are read and reused as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from atomdd.folders.layout import EVAL_ROWS
from atomdd.io import NUMBER, append_jsonl, read_jsonl, write_json
from atomdd.settings import EvalConfig

# an eval.jsonl row: whose repeat it is ("run"), its accuracy, and on the first `test_limit` images
REPEAT_ROW = {
    "set": str,
    "protocol": str,
    "model": str,
    "run": int,
    "accuracy": NUMBER,
    "first": (*NUMBER, type(None)),
}
# the settings that decide a repeat's accuracy (the number of repeats decides only which there are)
_PER_REPEAT = (
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "lr_decay",
    "decay_at",
    "dsa",
    "seed",
)


# settings that joined the protocol later, in the key only when not at their defaults
_OPTIONAL = ("cutmix", "teacher", "teacher_temperature")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig) if f.name in _OPTIONAL}


def repeats_of(config: dict[str, Any]) -> int:
    """The number of repeats an evaluation config records ("runs" before the setting was renamed)."""
    return int(config["repeats"] if "repeats" in config else config["runs"])


def repeat_protocol_key(config: dict[str, Any], precision: str) -> str:
    """The settings that decide one repeat's accuracy, as one canonical string (`teacher`: the
    teacher's identity, as the evaluation puts it there)."""
    parts = [f"{k}={config[k]}" for k in _PER_REPEAT] + [f"precision={precision}"]
    parts.append(f"test_limit={config.get('test_limit', 0)}")
    parts += [f"{k}={config[k]}" for k in _OPTIONAL if config.get(k, _DEFAULTS[k]) != _DEFAULTS[k]]
    return ",".join(parts)


def protocol_key(config: dict[str, Any], precision: str) -> str:
    """The key of a model's result in eval.json: the per-repeat settings and the number of repeats
    (spelled `runs=`, as in every eval.json written so far)."""
    return f"{repeat_protocol_key(config, precision)},runs={repeats_of(config)}"


def set_id(*tensors: Any, extra: str = "") -> str:
    """A short digest of a set's tensors (images, labels): another set's results are never reused."""
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy())
    return h.hexdigest()[:16]


class RepeatStore:
    """The finished (model, repeat) accuracies of one set under one per-repeat protocol, in `eval.jsonl`
    (and in memory: the rows added here count as done even without a file, or where this process
    does not write it, as on a torchrun rank other than the main one)."""

    def __init__(self, folder: str | Path | None, set_key: str, protocol: str, write: bool = True) -> None:
        self.path = Path(folder) / EVAL_ROWS if folder is not None else None
        self.set_key, self.protocol, self.write = set_key, protocol, write
        self.added: list[dict[str, Any]] = []

    def done(self, model: str) -> dict[int, dict[str, Any]]:
        """Repeat number → its row, for the repeats of `model` already finished."""
        on_disk = self.path is not None and self.path.exists()
        rows = (read_jsonl(self.path, REPEAT_ROW) if on_disk else []) + self.added
        mine = (
            r for r in rows if (r["set"], r["protocol"], r["model"]) == (self.set_key, self.protocol, model)
        )
        return {r["run"]: r for r in mine}

    def add(self, model: str, repeat: int, accuracy: float, first: float | None, seconds: float) -> None:
        row = {"set": self.set_key, "protocol": self.protocol, "model": model, "run": repeat}
        row |= {"accuracy": accuracy, "first": first, "seconds": seconds}
        self.added.append(row)
        if self.path is not None and self.write:
            append_jsonl(self.path, row)


def merge_result(path: Path, result: dict[str, Any], set_key: str) -> dict[str, Any]:
    """`result` with the results already in `path` (eval.json) merged in: this result's protocol and
    models replace only their own entries. Returns what is written."""
    key = protocol_key(result["config"], result["precision"])
    results: dict[str, dict[str, Any]] = {}
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        old = {}
    if isinstance(old, dict):
        if isinstance(old.get("results"), dict):  # each protocol's models, each model's result
            results = {
                k: {m: r for m, r in v.items() if isinstance(r, dict)}
                for k, v in old["results"].items()
                if isinstance(v, dict)
            }
        elif isinstance(old.get("models"), dict) and isinstance(old.get("config"), dict):  # before "results"
            try:
                was = protocol_key(old["config"], old.get("precision", old["config"].get("precision")))
                results[was] = {m: r | {"set_id": old.get("set_id")} for m, r in old["models"].items()}
            except (KeyError, TypeError):
                pass
    mine = results.setdefault(key, {})
    mine.update({m: r | {"set_id": set_key} for m, r in result["models"].items()})
    models = {
        m: {k: v for k, v in r.items() if k != "set_id"}
        for m, r in mine.items()
        if r.get("set_id") == set_key
    }
    merged = result | {"models": models, "set_id": set_key, "protocol": key, "results": results}
    write_json(path, merged)
    return merged
