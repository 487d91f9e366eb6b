"""Resumable grids of runs: for each (method, IPC, seed) make a set in its own folder, or reuse the
folder a previous invocation left, evaluate it once, and collect the results with paired
differences. `benchmarks/accuracy.py` is a thin script over this; an architecture search reuses it.

A grid lives under one folder: `ipc<IPC>/<method slug>-seed<SEED>/` holds a set (run.json and
synthetic.safetensors, or a coreset's set file alone) and its eval.json. A finished folder is
reused; a distillation folder made with other matching settings than its method spec means now is
refused (its name would lie); an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError

CORESETS = ("random", "herding", "kcenter")
EVAL_MODEL = "convnet"


@dataclass(frozen=True)
class Budget:
    """What every job of a grid shares: the data, the distillation steps, the evaluation."""

    dataset: str = "mnist"
    steps: int = 200  # distillation steps
    epochs: int = 300  # evaluation epochs
    runs: int = 3  # evaluation models per set
    test_limit: int = 0  # also the accuracy on the first N test images
    data_root: str | None = None


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    """`name` or `name[key=value,...]` (overrides for ablations) → (name, overrides)."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if not m:
        raise AtomddError(f"bad method spec {spec!r}; e.g. atom or atom[p_spatial=2,p_channel=6]")
    pairs = [kv for kv in (m.group(2) or "").split(",") if kv]
    bad = [kv for kv in pairs if "=" not in kv]
    if bad:
        raise AtomddError(f"bad method spec {spec!r}: overrides are key=value, got {bad}")
    return m.group(1), dict(kv.split("=", 1) for kv in pairs)


def slug(spec: str) -> str:
    """A method spec as a folder name: atom[embedding=0.01] → atom_embedding_0.01."""
    return re.sub(r"[^\w.-]+", "_", spec).strip("_")


def job_folder(out: Path, spec: str, ipc: int, seed: int) -> Path:
    return Path(out) / f"ipc{ipc}" / f"{slug(spec)}-seed{seed}"


def make_set(
    spec: str, ipc: int, seed: int, budget: Budget, folder: Path, quiet: bool = True, stop: object = None
):
    """The set of one job: made in `folder`, or the one a previous invocation finished there
    (a distillation resumes from its checkpoint). Returns a `SyntheticSet`."""
    from atomdd.coreset import select
    from atomdd.distillation.config import DistillConfig, make_config, preset
    from atomdd.distillation.driver import CHECKPOINT, RUN_FILE, distill
    from atomdd.lock import hold
    from atomdd.sets import FILENAME, load_synthetic

    name, overrides = parse_method(spec)
    if name in CORESETS:
        if (folder / FILENAME).exists():
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
        made = json.loads((folder / RUN_FILE).read_text())
        want = make_config(budget.dataset, ipc, name, iterations=budget.steps, seed=seed, **overrides)
        had = DistillConfig.from_dict(made["config"]).match.to_dict()  # either run.json format
        differ = {k: (had[k], v) for k, v in want.match.to_dict().items() if had[k] != v}
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
        resume=(folder / CHECKPOINT).exists(),
        quiet=quiet,
        stop=stop,
        iterations=budget.steps,
        seed=seed,
        data_root=budget.data_root,
        **overrides,
    )


def finished(folder: Path, budget: Budget) -> dict | None:
    """The eval report of a set evaluated under this budget, else None."""
    from atomdd.evaluate import RESULT_FILE
    from atomdd.runs import EVAL_RECORD, read_record

    eval_file = Path(folder) / RESULT_FILE
    if not eval_file.exists():
        return None
    report = read_record(eval_file, EVAL_RECORD)
    config = report["config"]
    if EVAL_MODEL not in report["models"] or "seconds" not in report:
        return None
    if config["epochs"] != budget.epochs or len(report["models"][EVAL_MODEL]["runs"]) != budget.runs:
        return None
    if config.get("test_limit", 0) != budget.test_limit:
        return None
    return report


def evaluate_job(syn, folder: Path, budget: Budget) -> dict:
    """The job's eval report: the one already there under this budget, or a new one."""
    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    report = finished(folder, budget)
    if report is None:
        cfg = EvalConfig(epochs=budget.epochs, runs=budget.runs, test_limit=budget.test_limit)
        report = evaluate_set(syn, [EVAL_MODEL], cfg, data_root=budget.data_root, out_dir=folder)
    return report


def collect(out: Path, budget: Budget, methods: list[str], against: str | None) -> dict[str, dict[int, dict]]:
    """Every finished set under `out`, by method and IPC: runs and seeds add up across invocations.
    Methods listed come first, as spelled; others follow by folder name. With `against`, each
    result gets its paired difference to that method."""
    found: dict[str, dict[int, list[dict]]] = {}
    for folder in sorted(Path(out).glob("ipc*/*-seed*")):
        label, _, seed = folder.name.rpartition("-seed")
        ipc = folder.parent.name.removeprefix("ipc")
        report = finished(folder, budget)
        if report is None or not seed.isdigit() or not ipc.isdigit():
            continue
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        found.setdefault(label, {}).setdefault(int(ipc), []).append(
            {
                "seed": int(seed),
                "runs": report["models"][EVAL_MODEL]["runs"],
                "first": report["models"][EVAL_MODEL].get("first", {}).get("runs"),
                "make_seconds": run.get("wall_seconds"),
                "eval_seconds": report["seconds"],
            }
        )
    order = [slug(m) for m in methods]
    results: dict[str, dict[int, dict]] = {}
    for folder_label in sorted(found, key=lambda x: (order.index(x) if x in order else len(order), x)):
        label = methods[order.index(folder_label)] if folder_label in order else folder_label
        for ipc, per_seed in sorted(found[folder_label].items()):
            results.setdefault(label, {})[ipc] = summary(per_seed)
    if against in results:
        for label, by_ipc in results.items():
            for ipc, r in by_ipc.items():
                if label != against and ipc in results[against]:
                    r["paired"] = paired(r, results[against][ipc], against)
    return results


def summary(per_seed: list[dict]) -> dict[str, Any]:
    """Mean and spread over every run of every seed; `per_seed` items hold seed, runs and first."""
    all_runs = [a for s in per_seed for a in s["runs"]]
    seed_means = [statistics.mean(s["runs"]) for s in per_seed]
    first = [a for s in per_seed for a in s["first"] or []]
    return {
        "first_mean": statistics.mean(first) if first else None,
        "first_std": statistics.stdev(first) if len(first) > 1 else 0.0,
        "mean": statistics.mean(all_runs),
        "std": statistics.stdev(all_runs) if len(all_runs) > 1 else 0.0,
        "seeds": [s["seed"] for s in per_seed],
        "seed_means": seed_means,
        "seed_std": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
        "per_seed": per_seed,
    }


def paired(result: dict, ref: dict, ref_label: str) -> dict | None:
    """Difference to `ref`, run by run: evaluation run r of every set starts from the same weights and
    augmentation draws (its seeds depend only on r), so pairing by (seed, run) removes the spread that
    comes from the evaluation model, which hides differences smaller than a point."""
    ref_runs = {s["seed"]: s["runs"] for s in ref["per_seed"]}
    by_seed = [
        [a - b for a, b in zip(s["runs"], ref_runs[s["seed"]], strict=False)]  # the runs both have
        for s in result["per_seed"]
        if s["seed"] in ref_runs
    ]
    diffs = [d for one_seed in by_seed for d in one_seed]
    if not diffs:
        return None
    # a seed's mean difference compares the two distilled sets themselves: its spread is the one that
    # says whether one method makes better sets, not just better luck with one evaluation model
    seed_diffs = [statistics.mean(d) for d in by_seed]
    return {
        "against": ref_label,
        "mean": statistics.mean(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "wins": sum(d > 0 for d in diffs),
        "n": len(diffs),
        "seed_std": statistics.stdev(seed_diffs) if len(seed_diffs) > 1 else 0.0,
        "seed_wins": sum(d > 0 for d in seed_diffs),
        "seeds": len(seed_diffs),
    }
