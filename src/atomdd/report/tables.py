"""Markdown tables: the accuracy table (methods × IPC, with each method's paired difference to a
reference method), an evaluation's table (`atomdd evaluate`) and an architecture search's
(`atomdd nas`). Made from the JSON the folders hold; no torch."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from atomdd.distillation.config import method_spec, spec_differences
from atomdd.folders.layout import safe_name
from atomdd.folders.read import Folder, Group
from atomdd.methods import method_order


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: one header row, its rule, one line per row (cells as `str` gives them)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: Any, fmt: str) -> str:
    """A number as `fmt` formats it; a dash where there is none."""
    return "–" if value is None else format(value, fmt)


# --- the accuracy table ----------------------------------------------------------------------


def summary(per_seed: list[dict]) -> dict[str, Any]:
    """Mean and spread over every repeat of every seed; `per_seed` items hold "seed", "runs" (the
    accuracy of each repeat, as eval.json names them) and "first" (the same on the first N test
    images, or None)."""
    every = [a for s in per_seed for a in s["runs"]]
    seed_means = [statistics.mean(s["runs"]) for s in per_seed]
    first = [a for s in per_seed for a in s["first"] or []]
    return {
        "first_mean": statistics.mean(first) if first else None,
        "first_std": statistics.stdev(first) if len(first) > 1 else 0.0,
        "mean": statistics.mean(every),
        "std": statistics.stdev(every) if len(every) > 1 else 0.0,
        "seeds": [s["seed"] for s in per_seed],
        "seed_means": seed_means,
        "seed_std": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
        "per_seed": per_seed,
    }


def paired(result: dict, ref: dict, ref_label: str) -> dict | None:
    """Difference to `ref`, repeat by repeat: repeat r of every set starts from the same weights and
    augmentation draws (its seeds depend only on r), so pairing by (seed, repeat) removes the spread
    that comes from the evaluation model, which hides differences smaller than a point."""
    ref_runs = {s["seed"]: s["runs"] for s in ref["per_seed"]}
    by_seed = [
        [a - b for a, b in zip(s["runs"], ref_runs[s["seed"]], strict=False)]  # the repeats both have
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


def _fmt(values: list[float]) -> str:
    if len(values) == 1:  # one model: no spread to show
        return f"{values[0]:.1f}"
    std = statistics.pstdev(values)  # as eval.json and the published code (np.std) compute it
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def row_order(label: str) -> tuple[int, bool, str]:
    """Where a row goes: by its method (`methods.method_order`), a preset before its variants."""
    base = label.split("[")[0].removesuffix(" †")
    return (method_order(base)[0], base != label, label)


def row_label(r: Folder) -> str:
    """The row a folder's numbers go in: for a distillation, the method spec it would be made with
    today (`atom[embedding=0.1]`: the method and every setting it was made with that today's preset
    for it does not hold), whatever its folder is called; else the folder's label (a coreset)."""
    config = r.run.get("config")
    diffs = spec_differences(config) if config and "method" in config else None
    if diffs is None:
        return r.label
    return method_spec(config["method"], {k: made for k, (made, _) in diffs.items()})


def _words(name: str) -> list[str]:
    """A folder name's words, `1.0` as `1`: two spellings of one spec compare equal."""
    return sorted(re.sub(r"(\d)\.0(?=_|$)", r"\1", safe_name(name)).split("_"))


def made_as(r: Folder, label: str) -> str | None:
    """A line on a grid folder whose name says other than its row's label, else None: a name given
    under an earlier preset, whose settings have changed since (marked †), or one that names a
    setting today's preset holds."""
    if r.group == "runs" or _words(label) == _words(r.label):
        return None
    diffs = spec_differences(r.run.get("config") or {}) or {}
    stale = {k: v for k, v in diffs.items() if f"{k}_" not in f"{r.label}_"}  # the name does not say them
    if stale:
        then = "; ".join(f"{k} {_said(made)} then, {_said(now)} now" for k, (made, now) in stale.items())
        return f"† `{label}` was made as `{r.label}` under an earlier preset ({then})."
    return f"`{label}` was made as `{r.label}`: today's preset holds what that name says."


def _said(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def by_model(group: Group) -> dict[tuple[str, str], dict[str, dict[int, list[Folder]]]]:
    """(dataset, model) → row label (`row_label`) → IPC → the evaluated folders."""
    table: dict[tuple[str, str], dict[str, dict[int, list[Folder]]]] = {}
    for r in group.members:
        for model in (r.evaluation or {}).get("models", {}):
            by_method = table.setdefault((r.dataset, model), {})
            by_method.setdefault(row_label(r), {}).setdefault(r.ipc, []).append(r)
    return table


def accuracy_stats(
    by_method: dict[str, dict[int, list[Folder]]], model: str, against: str = "atom"
) -> dict[str, dict[int, dict[str, Any]]]:
    """Method → IPC → `summary` of the sets evaluated with `model` (a set per seed), with its
    `paired` difference to `against` where that method has the same IPC."""
    stats: dict[str, dict[int, dict[str, Any]]] = {}
    for label, by_ipc in by_method.items():
        for ipc, found in sorted(by_ipc.items()):
            per_seed = []
            for r in found:
                m = r.evaluation["models"][model]
                per_seed.append(
                    {
                        "seed": r.seed,
                        "runs": m["runs"],
                        "first": m.get("first", {}).get("runs"),
                        "make_seconds": r.run.get("wall_seconds"),
                        "eval_seconds": r.evaluation.get("seconds"),
                    }
                )
            if per_seed:
                stats.setdefault(label, {})[ipc] = summary(per_seed)
    for label, by_ipc in stats.items():
        for ipc, r in by_ipc.items():
            ref = stats.get(against, {}).get(ipc)
            if label != against and ref and (d := paired(r, ref, against)):
                r["paired"] = d
    return stats


def accuracy_table(by_method: dict[str, dict[int, list[Folder]]], model: str, against: str = "atom") -> str:
    """Rows methods, columns IPC (the published tables' layout): mean ± std over every evaluation
    model of every seed, n = sets (seeds); where the grid has `against`, each method's paired
    difference to it; where the sets were also tested on the first N test images, that column too.
    Below the table, the notes (`table_notes`): rows made under another name or an earlier preset
    (the label marked †), and rows whose sets are the same images."""
    ipcs = sorted({i for by_ipc in by_method.values() for i in by_ipc}, key=lambda i: (i == 0, i))
    stats = accuracy_stats(by_method, model, against)
    every = [r for by_ipc in by_method.values() for found in by_ipc.values() for r in found]
    limits = {r.evaluation["models"][model].get("first", {}).get("images") for r in every} - {None}
    first = f"first {limits.pop()}" if len(limits) == 1 else None
    header = ["method"]
    for i in ipcs:
        col = f"IPC {i}" if i else "whole data"
        header += [col]
        header += [f"method − {against}, {col}"] if against in by_method and i else []
        header += [f"{col}, {first} test images"] if first else []
    notes = table_notes(by_method, model)
    rows = []
    for label in sorted(by_method, key=row_order):
        stale = any(n.startswith(f"† `{label}`") for n in notes)
        cells = [label + (" †" if stale else "")]
        for i in ipcs:
            r = stats.get(label, {}).get(i)
            accs = [a for s in r["per_seed"] for a in s["runs"]] if r else []
            cells.append(_cell(accs, len(r["seeds"])) if r else "–")
            if against in by_method and i:
                d = r and r.get("paired")
                cells.append(_paired_cell(d) if d else "–")
            if first:
                tested = [a for s in r["per_seed"] for a in s["first"] or []] if r else []
                cells.append(_fmt(tested) if tested else "–")
        rows.append(cells)
    return "\n\n".join([markdown_table(header, rows), *notes])


def _cell(accs: list[float], seeds: int) -> str:
    return _fmt(accs) + (" (1 model)" if len(accs) == 1 else f" (n={seeds})")


def _paired_cell(d: dict[str, Any]) -> str:
    if d["n"] == 1:
        return f"{d['mean']:+.2f} (1 model)"
    seeds = f"; seeds ± {d['seed_std']:.2f}" if d["seeds"] > 1 else ""
    return f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['wins']}/{d['n']} models ahead{seeds})"


def table_notes(by_method: dict[str, dict[int, list[Folder]]], model: str) -> list[str]:
    """The notes under an accuracy table: each row made under another name (`made_as`; † where an
    earlier preset made it), and the rows of an IPC whose sets gave the very same accuracy, model
    by model and seed by seed: the same images picked (herding and k-center at IPC 1 both take
    each class's image closest to its mean)."""
    notes = sorted(
        {
            n
            for label, by_ipc in by_method.items()
            for f in by_ipc.values()
            for r in f
            if (n := made_as(r, label))
        }
    )
    for ipc in sorted({i for by_ipc in by_method.values() for i in by_ipc}):
        same: dict[tuple, list[str]] = {}
        for label in sorted(by_method, key=row_order):
            found = by_method[label].get(ipc, [])
            key = tuple(sorted((r.seed, tuple(r.evaluation["models"][model]["runs"])) for r in found))
            if key:
                same.setdefault(key, []).append(label)
        for labels in (v for v in same.values() if len(v) > 1):
            notes.append(
                f"{' and '.join(f'`{x}`' for x in labels)} at IPC {ipc}: the same accuracy model by "
                "model, seed by seed: the same images picked."
            )
    return notes


# --- an evaluation (eval.json) -----------------------------------------------------------------


def eval_table(result: dict[str, Any]) -> str:
    """The model × accuracy table of an evaluation (eval.json), with a title line."""
    first = result["config"].get("test_limit", 0)
    header = [
        "model",
        "accuracy (%)",
        *([f"first {first} test images (%)"] if first else []),
        "repeats",
        "seconds",
    ]
    rows = []
    for name, r in result["models"].items():
        extra = [f"{r['first']['mean']:.2f} ± {r['first']['std']:.2f}"] if first else []
        n, reused = len(r["runs"]), r.get("reused", 0)
        seconds = f"{r['seconds']:.1f}" if reused < n else "–"
        if reused:  # from eval.jsonl: a rerun trains only what is missing
            seconds += f" ({reused} of {n} reused)" if reused < n else f" (all {n} reused from eval.jsonl)"
        rows.append([name, f"{r['mean']:.2f} ± {r['std']:.2f}", *extra, n, seconds])
    s = result.get("set", {})
    what = f"{s.get('kind', '?')} set of {s.get('images', '?')} images"
    title = f"{result.get('dataset', '?')}, {what}, {result['config']['epochs']} epochs"
    return title + "\n" + markdown_table(header, rows)


# --- an architecture search (nas.json) ---------------------------------------------------------


def nas_table(summary: dict[str, Any]) -> str:
    """The published layout: a column per proxy and the whole dataset; the true accuracy of the
    architecture each ranks first, rank correlations with the truth, time and images stored."""
    proxies = summary["proxies"]
    s = summary["settings"]
    rows = [
        ["best arch. true accuracy (%)", *[cell(p["best_true_accuracy"], ".2f") for p in proxies.values()]],
        ["Spearman, whole space", *[cell(p["spearman_all"], ".2f") for p in proxies.values()]],
        ["Spearman, top 20 %", *[cell(p["spearman_top20"], ".2f") for p in proxies.values()]],
        ["Kendall, whole space", *[cell(p["kendall_all"], ".2f") for p in proxies.values()]],
        ["Kendall, top 20 %", *[cell(p["kendall_top20"], ".2f") for p in proxies.values()]],
        ["time (min)", *[cell(p["minutes"], ".1f") for p in proxies.values()]],
        ["images stored", *[cell(p["images"], "d") for p in proxies.values()]],
    ]
    header = ["", *[("whole dataset" if k == "whole" else k) for k in proxies]]
    n = max((p["architectures"] for p in proxies.values()), default=0)
    title = (
        f"{s['dataset']}, space {s['space_name']}: {n} architectures ({len(summary['skipped'])} skipped), "
        f"seeds {', '.join(map(str, s['seeds']))}; proxy {s['epochs']} epochs, early stop "
        f"{s['early_epochs']}, whole dataset {s['truth_epochs']}"
    )
    lines = [title, markdown_table(header, rows)]
    lines += [f"skipped {k['arch']}: {k['reason']}" for k in summary["skipped"]]
    return "\n".join(lines)
