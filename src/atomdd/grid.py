"""`atomdd grid`: resumable grids of (method, IPC, seed) jobs under one budget. For each job make a
set in its own folder, or reuse the folder a previous invocation left, evaluate it once, and
tabulate every finished job with each method's paired difference to a reference method.

A grid lives under one folder: `ipc<IPC>/<method spec>-seed<SEED>/` (`folders.layout.grid_member`)
holds a set (run.json and synthetic.safetensors, or a coreset's set file alone) and its eval.json;
`accuracy.json` beside them holds the table's numbers. A finished folder is reused; a distillation
folder made with other matching settings than its method spec means now is refused (its name would
lie); an interrupted one resumes from its checkpoint. A method spec is a method with optional
overrides, for ablations: `atom[p_spatial=2,p_channel=6]`.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomdd.distillation.config import parse_method
from atomdd.errors import AtomddError, refuse
from atomdd.folders.layout import GRID_SUMMARY, RUN_FILE, SET_FILE, grid_member
from atomdd.folders.read import gather, read_folder
from atomdd.lock import hold
from atomdd.settings import CORESET_METHODS, helped

if TYPE_CHECKING:
    from atomdd.distillation.config import DistillConfig

EVAL_MODEL = "convnet"


@dataclass(frozen=True)
class Budget:
    """What every job of a grid shares: the data, the distillation steps, the evaluation."""

    # settings renamed: the old name (a config key, a flag) still works, with a warning
    RENAMED: ClassVar[dict[str, str]] = {"runs": "repeats"}

    dataset: str = helped("mnist", "a registered dataset (`atomdd datasets` lists them)")
    iterations: int = helped(200, "distillation steps")
    epochs: int = helped(300, "evaluation epochs")
    repeats: int = helped(3, "evaluation models per set")
    test_limit: int = helped(0, "also report the accuracy on the first N test images (0: no)")
    data_root: str | None = helped(None, "folder holding MNIST/, cifar-10-batches-py/, … (or $ATOMDD_DATA)")

    def __post_init__(self) -> None:
        refuse("grid setting(s)", self.problems())

    def problems(self) -> list[str]:
        bad = [f"{k}={getattr(self, k)} (at least 1)" for k in ("epochs", "repeats") if getattr(self, k) < 1]
        bad += [
            f"{k}={getattr(self, k)} (at least 0)"
            for k in ("iterations", "test_limit")
            if getattr(self, k) < 0
        ]
        return bad


@dataclass(frozen=True)
class GridSettings(Budget):
    """A grid: its budget, and the methods × IPCs × seeds it holds; `atomdd grid`'s flags."""

    methods: tuple[str, ...] = helped(
        ("random", "herding", "kcenter", "dm", "datadam", "atom"),
        "method specs: a method (`atomdd methods`), a coreset, or atom[key=value,...]",
    )
    ipc: tuple[int, ...] = helped((1, 10), "images per class")
    seeds: tuple[int, ...] = helped((0,), "distillation / selection seeds")
    against: str = helped("atom", "the method paired differences are taken against")

    def problems(self) -> list[str]:
        bad = super().problems()
        for spec in self.methods:
            try:
                parse_method(spec)
            except AtomddError as e:
                bad.append(str(e))
        if not self.methods or not self.ipc or not self.seeds:
            bad.append("a grid needs at least one method, one IPC and one seed")
        bad += [f"ipc={i} (at least 1)" for i in self.ipc if i < 1]
        return bad

    @property
    def budget(self) -> Budget:
        return Budget(**{f.name: getattr(self, f.name) for f in fields(Budget)})


def make_set(
    spec: str, ipc: int, seed: int, budget: Budget, folder: Path, quiet: bool = False, stop: object = None
):
    """The set of one job: made in `folder`, or the one a previous invocation finished there
    (a distillation resumes from its checkpoint). Returns a `SyntheticSet`."""
    from atomdd.api import distill
    from atomdd.coreset import select
    from atomdd.distillation.config import DistillConfig, make_config, preset
    from atomdd.sets import load_synthetic

    name, overrides = parse_method(spec)
    if name in CORESET_METHODS:
        if (folder / SET_FILE).exists():
            return load_synthetic(folder)
        # coresets are stored in the space the distilled sets of the same dataset use (ZCA for CIFAR)
        zca = preset(budget.dataset, ipc, "atom")["zca"]
        with hold(folder):
            syn = select(
                budget.dataset, ipc, name, seed=seed, data_root=budget.data_root, zca=zca, **overrides
            )
            syn.save(folder)
        return syn
    if (folder / RUN_FILE).exists():
        # a folder is named by its spec, and a preset's defaults can change: never reuse a set made
        # with other matching settings than the spec means now
        made = read_folder(folder, "grid").run
        want = make_config(budget.dataset, ipc, name, iterations=budget.iterations, seed=seed, **overrides)
        had = _spec_settings(DistillConfig.from_dict(made["config"]))  # either run.json format
        differ = {k: (had[k], v) for k, v in _spec_settings(want).items() if had[k] != v}
        if differ:
            raise AtomddError(
                f"{folder} was made with other settings than {spec!r} means now (made, now): {differ}; "
                "move it aside, or spell the settings out in the spec"
            )
        if made.get("status") == "done":
            return load_synthetic(folder)
    return distill(
        budget.dataset,
        ipc,
        name,
        out=folder,
        resume="auto",
        quiet=quiet,
        stop=stop,
        iterations=budget.iterations,
        seed=seed,
        data_root=budget.data_root,
        **overrides,
    )


def _spec_settings(cfg: DistillConfig) -> dict[str, Any]:
    """What a grid folder's name stands for: the loss, and the engine's options (factor images,
    the pool and its interpolation)."""
    return cfg.match.to_dict() | {k: getattr(cfg, k) for k in ("factor", "pool_dir", "pool_interp")}


def finished(folder: Path, budget: Budget) -> dict | None:
    """The evaluation (eval.json) of a set evaluated under this budget, else None (also where the
    latest evaluation there used CutMix or a teacher: the grid's numbers are hard-label ones)."""
    result = read_folder(Path(folder), "grid").evaluation
    if result is None:
        return None
    config = result["config"]
    if config.get("cutmix", 0) or config.get("teacher") or EVAL_MODEL not in result["models"]:
        return None
    if config["epochs"] != budget.epochs or len(result["models"][EVAL_MODEL]["runs"]) != budget.repeats:
        return None
    if config.get("test_limit", 0) != budget.test_limit:
        return None
    return result


def evaluate_job(syn, folder: Path, budget: Budget) -> dict:
    """The job's evaluation: the one already there under this budget, or a new one."""
    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    result = finished(folder, budget)
    if result is None:
        cfg = EvalConfig(epochs=budget.epochs, repeats=budget.repeats, test_limit=budget.test_limit)
        result = evaluate_set(syn, [EVAL_MODEL], cfg, data_root=budget.data_root, out_dir=folder)
    return result


def by_method(out: Path, budget: Budget) -> dict[str, dict[int, list]]:
    """Every set under `out` evaluated under `budget`, by method and IPC (`folders.read.Folder`s):
    sets and seeds add up across invocations."""
    if not Path(out).is_dir():
        return {}
    groups, _ = gather([out])
    found: dict[str, dict[int, list]] = {}
    for r in (m for g in groups for m in g.members):
        if finished(r.path, budget) is not None:
            found.setdefault(r.label, {}).setdefault(r.ipc, []).append(r)
    return found


def tabulate(out: str | Path, grid: GridSettings, command: str = "") -> str:
    """The grid's accuracy table (`report.tables.accuracy_table`, the page's), its numbers written
    to `out/accuracy.json`."""
    from atomdd.io import versions, write_json
    from atomdd.report.tables import accuracy_stats, accuracy_table

    found = by_method(out, grid.budget)
    budget = asdict(grid.budget) | {"data_root": None}
    stats = accuracy_stats(found, EVAL_MODEL, grid.against)
    record = {"dataset": grid.dataset, "budget": budget, "results": stats, "versions": versions()}
    if found:
        with hold(out):  # one process writes under a grid's folder at a time
            write_json(Path(out) / GRID_SUMMARY, record | {"command": command or " ".join(sys.argv)})
    title = (
        f"{grid.dataset}, {grid.iterations} distillation steps, {grid.repeats} {EVAL_MODEL} models × "
        f"{grid.epochs} epochs per set: test accuracy (%), mean ± std over every model of every seed "
        f"(n = seeds); method − {grid.against}: the paired difference, repeat by repeat"
    )
    table = accuracy_table(found, EVAL_MODEL, grid.against) if found else "(no set finished yet)"
    return title + "\n\n" + table


def run_grid(
    grid: GridSettings, out: str | Path, quiet: bool = False, say: Callable[[str], None] | None = None
) -> str:
    """Make and evaluate every job of `grid` not yet finished under `out`; the table of all. Each
    job's progress shows unless `quiet`; `say` gets a line per finished job."""
    from atomdd.progress import silenced
    from atomdd.signals import stop_on_signals

    out = Path(out)
    # one process writes under a grid's folder at a time (each job's folder too)
    with hold(out), silenced(quiet):
        for ipc, spec, seed in itertools.product(grid.ipc, grid.methods, grid.seeds):
            folder = grid_member(out, spec, ipc, seed)
            t = time.perf_counter()
            result = finished(folder, grid.budget)  # evaluated: its set file is not needed
            if result is None:
                with stop_on_signals() as stop:  # interrupted: the checkpoint is kept, a rerun resumes
                    syn = make_set(spec, ipc, seed, grid.budget, folder, quiet, stop)
                result = evaluate_job(syn, folder, grid.budget)
            if say is not None:
                accs = result["models"][EVAL_MODEL]["runs"]
                say(
                    f"ipc {ipc:>2} {spec:<40} seed {seed}: {sum(accs) / len(accs):6.2f} "
                    f"(made in {time.perf_counter() - t:.0f} s, evaluated in {result['seconds']:.0f} s)"
                )
        return tabulate(out, grid)


__all__ = ["Budget", "GridSettings", "make_set", "parse_method", "run_grid", "tabulate"]
