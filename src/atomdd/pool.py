"""Pools of trained networks: the matching source of DSDM, DANCE and NCFM (`DistillConfig.pool_dir`),
and an evaluation's teacher (`EvalConfig.teacher`).

A pool is `members` networks of one architecture, trained on a dataset's whole real train set
by the evaluation's training loop (`train.train_models`: member m is its repeat m, so its initial
weights, batch order and augmentations come from (seed, m)), their weights kept at epoch 0 and at
the snapshot epochs. On disk (`folders.layout`): `pool.safetensors`, a tensor `m<member>/e<epoch>/
<name>` per weight, and `pool.json`, its record: the dataset and its content hash, the
preprocessing (ZCA or not), the model, the training settings, the snapshot epochs, each member's
test accuracy at its last epoch and time, the versions. Loading reads JSON and safetensors only.

A build writes the pool after each member, so a build stopped between members continues where it
stopped when run again with the same settings; a pool is used only once complete. A run names its
pool by folder, or `default` (`settings.POOL_DEFAULT`): `DATA_ROOT/pools/<dataset>-<model>[-zca]`,
where `atomdd pool` writes by default. A pool made from other data, another preprocessing or
another backbone than the run's is refused, saying which.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from atomdd.data import Dataset, as_dataset, resolve_data_root
from atomdd.errors import AtomddError
from atomdd.folders.layout import POOL_RECORD, POOL_WEIGHTS, safe_name
from atomdd.io import mismatch, save_safetensors, versions, write_json
from atomdd.lock import hold
from atomdd.models import FeatureModel, ModelRef, get_spec, seeded_model
from atomdd.progress import Progress
from atomdd.provenance import git_state
from atomdd.settings import POOL_DEFAULT, PoolSettings
from atomdd.train import init_models, test_models, train_models

# what a pool must share with the run or evaluation that uses it (the rest is its own record)
_IDENTITY = ("dataset", "dataset_hash", "preprocess", "model", "train", "snapshots", "members")
# what pool.json must hold to be read back (`io.mismatch`): a damaged one is refused, not a traceback
_RECORD = {
    "dataset": str,
    "dataset_hash": str,
    "preprocess": dict,
    "model": str,
    "train": dict,
    "snapshots": [int],
    "members": int,
    "channels": int,
    "classes": int,
    "image_size": int,
    "done": list,
    "weights_sha256?": str,
}


def dataset_zca(dataset: str) -> bool:
    """Whether the dataset's distillation preset whitens (CIFAR): a pool's default."""
    from atomdd.distillation.config import preset

    return bool(preset(dataset, 1, "atom")["zca"])


def default_folder(dataset: str, model: str, zca: bool, data_root: str | Path | None = None) -> Path:
    """Where the default pool of (dataset, backbone, ZCA) lives: DATA_ROOT/pools/<dataset>-<model>[-zca]."""
    name = safe_name(f"{dataset}-{ModelRef.parse(model)}{'-zca' if zca else ''}")
    return resolve_data_root(data_root) / "pools" / name


def resolve(pool: str, dataset: str, model: str, zca: bool, data_root: str | Path | None = None) -> Path:
    """A run's `pool_dir` setting as a folder (`default`: `default_folder`)."""
    return default_folder(dataset, model, zca, data_root) if pool == POOL_DEFAULT else Path(pool)


def for_run(pool: str, dataset: str, model: str, zca: bool, data_root: str | Path | None = None) -> Pool:
    """The pool a distillation's `pool_dir` setting names, loaded; a missing one is refused with the
    command that builds it."""
    folder = resolve(pool, dataset, model, zca, data_root)
    if not (folder / POOL_RECORD).is_file():
        command = f"atomdd pool --dataset {dataset} --model '{model}' --{'' if zca else 'no-'}zca"
        command += f" --data-root {data_root}" if data_root else ""
        command += "" if pool == POOL_DEFAULT else f" --out {folder}"
        raise AtomddError(f"pool_dir={pool}: there is no pool in {folder}; build it with `{command}`")
    return load(folder)


def _full_model(model: str) -> tuple[str, dict[str, Any]]:
    """A model reference with every option spelled out: two spellings of one network compare equal."""
    ref = ModelRef.parse(model)
    return ref.name, get_spec(ref.name).options | dict(ref.options)


@dataclass(frozen=True)
class Pool:
    """A complete pool, loaded: its folder, its record and its weights (on the CPU)."""

    folder: Path
    record: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def choices(self) -> list[tuple[int, int]]:
        """Every (member, snapshot epoch) a step can pick, in a fixed order."""
        return [(m, e) for m in range(self.record["members"]) for e in self.record["snapshots"]]

    @property
    def digest(self) -> str:
        """The pool's identity as runs and evaluations record it: its weights file's sha256."""
        return self.record["weights_sha256"]

    def state(self, member: int, epoch: int) -> dict[str, torch.Tensor]:
        prefix = f"m{member}/e{epoch}/"
        return {k[len(prefix) :]: v for k, v in self.weights.items() if k.startswith(prefix)}

    def network(self, member: int, epoch: int, mix: float | None = None) -> FeatureModel:
        """Member `member` at `epoch`; with `mix` l, its weights l·θ_0 + (1 − l)·θ_epoch (DANCE's
        interpolation with the member's own initial weights; integer buffers from `epoch`)."""
        r = self.record
        state = self.state(member, epoch)
        if mix is not None:
            start = self.state(member, 0)
            state = {
                k: torch.lerp(v, start[k], mix) if v.is_floating_point() else v for k, v in state.items()
            }
        name, options = _full_model(r["model"])
        net = seeded_model(0, name, r["channels"], r["classes"], r["image_size"], **options)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise AtomddError(f"pool {self.folder}: its weights do not fit {r['model']} ({e})") from None
        return net

    def check(self, data: Dataset, zca: bool, model: str | None, what: str) -> None:
        """Refuse a pool made from other data, with another preprocessing or (`model` given)
        another backbone than `what` uses, saying which."""
        r = self.record
        if r["dataset_hash"] != data.content_hash:
            raise AtomddError(
                f"pool {self.folder} was trained on other data ({r['dataset']}, hash "
                f"{r['dataset_hash'][:12]}…) than {what} ({data.name}, hash {data.content_hash[:12]}…); "
                f"build one for it with `atomdd pool --dataset {data.name}`"
            )
        if bool(r["preprocess"].get("zca")) != zca:
            had, want = ("ZCA-whitened", "unwhitened") if not zca else ("unwhitened", "ZCA-whitened")
            raise AtomddError(
                f"pool {self.folder} was trained on {had} images, {what} uses {want} ones; build one "
                f"with `atomdd pool --dataset {data.name} --{'' if zca else 'no-'}zca`"
            )
        if model is not None and _full_model(r["model"]) != _full_model(model):
            raise AtomddError(
                f"pool {self.folder} holds {r['model']} networks, {what} uses {model} as its backbone; "
                f"build one with `atomdd pool --dataset {data.name} --model '{model}'`"
            )


def _read_record(folder: Path) -> dict[str, Any] | None:
    file = folder / POOL_RECORD
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise AtomddError(f"{file} is not readable JSON: {e}") from None
    if why := mismatch(record, _RECORD):
        raise AtomddError(f"{file} is not a pool record written by atomdd ({why})")
    return record


def load(folder: str | Path) -> Pool:
    """The complete pool in `folder`; refused if there is none, or it is still being built."""
    folder = Path(folder)
    record = _read_record(folder)
    if record is None:
        raise AtomddError(f"no pool in {folder}: it holds no {POOL_RECORD} (build one with `atomdd pool`)")
    if len(record["done"]) < record["members"]:
        raise AtomddError(
            f"pool {folder} is incomplete ({len(record['done'])} of {record['members']} networks); "
            "run the same `atomdd pool` command again to finish it"
        )
    try:
        weights = load_file(str(folder / POOL_WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise AtomddError(f"{folder / POOL_WEIGHTS} is missing or corrupt: {e}") from None
    pool = Pool(folder, record, weights)
    epochs = (0, *record["snapshots"])
    missing = [f"m{m}/e{e}" for m in range(record["members"]) for e in epochs if not pool.state(m, e)]
    if missing:
        raise AtomddError(f"{folder / POOL_WEIGHTS} lacks the weights of {', '.join(missing[:4])}")
    return pool


def teacher(folder: str | Path, data: Dataset, zca: bool) -> tuple[FeatureModel, str]:
    """The pool's first member at its last snapshot, in eval mode (an evaluation's teacher), and
    the pool's digest."""
    pool = load(folder)
    pool.check(data, zca, None, "this evaluation")
    return pool.network(0, pool.record["snapshots"][-1]).eval().requires_grad_(False), pool.digest


def _keep(
    kept: dict[int, dict[str, torch.Tensor]],
    snapshots: list[int],
    repeats: list[int],
    epoch: int,
    states: Callable[[], list[dict[str, torch.Tensor]]],
) -> None:
    """`train_models`' `on_weights` hook of one member: its weights at each snapshot epoch."""
    if epoch in snapshots:
        kept[epoch] = states()[0]


def build(
    settings: PoolSettings,
    out: str | Path | None = None,
    data: Dataset | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train the pool `settings` describe into `out` (default: its `default_folder`), member by
    member, continuing a build of the same settings found there. Returns the folder and its record."""
    data = as_dataset(data if data is not None else settings.dataset, settings.data_root)
    zca = settings.zca if settings.zca is not None else dataset_zca(data.name)
    size = data.image_size[0]
    ref = ModelRef.parse(settings.model)
    ref = ModelRef(ref.name, tuple(ref.options_for(size).items()))  # the network as trained, spelled out
    folder = Path(out) if out is not None else default_folder(data.name, str(ref), zca, settings.data_root)
    config = settings.train_config()
    prep = data.preprocess(zca)
    identity = {
        "dataset": data.name,
        "dataset_hash": data.content_hash,
        "preprocess": prep.meta(),
        "model": str(ref),
        "train": asdict(config),
        "snapshots": settings.snapshots(),
        "members": settings.members,
    }
    with hold(folder):  # one build per folder: two would interleave their members
        record = _read_record(folder)
        if record is not None and {k: record[k] for k in _IDENTITY} != identity:
            differ = sorted(k for k in _IDENTITY if record[k] != identity[k])
            raise AtomddError(
                f"{folder} holds another pool (it differs in {', '.join(differ)}); give another --out"
            )
        if record is None:
            shape = {"channels": data.channels, "classes": data.num_classes, "image_size": size}
            record = identity | shape | {"done": []}
        weights = load_file(str(folder / POOL_WEIGHTS)) if record["done"] else {}
        todo = list(range(len(record["done"]), settings.members))
        if not todo:
            return folder, record
        train_x, test_x = prep(data.train_images), prep(data.test_images)
        bar = Progress("pool", len(todo) * settings.epochs, unit="epoch", shown=progress)

        def advance(repeats: list[int], epoch: int, loss: torch.Tensor) -> None:
            bar.advance(1, f"network {repeats[0] + 1}/{settings.members}, epoch {epoch}/{settings.epochs}")

        for m in todo:
            start = time.perf_counter()
            (first,) = init_models(ref, data.channels, data.num_classes, size, [m], config.seed)
            kept = {0: {k: v.detach().clone() for k, v in first.state_dict().items()}}
            keep = partial(_keep, kept, identity["snapshots"])
            models = train_models(
                ref, train_x, data.train_labels, data.num_classes, config, [m], advance, on_weights=keep
            )
            trained = time.perf_counter() - start
            (accuracy,) = test_models(models, test_x, data.test_labels, config)
            weights |= {f"m{m}/e{e}/{k}": v for e, state in kept.items() for k, v in state.items()}
            save_safetensors(folder / POOL_WEIGHTS, weights, {})
            record["done"].append(
                {
                    "member": m,
                    "accuracy": accuracy,
                    "seconds": time.perf_counter() - start,
                    "seconds_per_epoch": trained / settings.epochs,
                }
            )
            record |= {
                "weights_sha256": hashlib.sha256((folder / POOL_WEIGHTS).read_bytes()).hexdigest(),
                "wall_seconds": sum(d["seconds"] for d in record["done"]),
                "versions": versions(),
                "git": git_state(),
            }
            write_json(folder / POOL_RECORD, record)
            if say is not None:
                say(f"network {m + 1}/{settings.members}: test accuracy {accuracy:.2f} % ({trained:.0f} s)")
        bar.close()
        return folder, record
