"""Markdown tables: the accuracy table (methods × IPC, with each method's paired difference to a
reference method), an evaluation's table (`atomdd evaluate`) and an architecture search's
(`atomdd nas`). Made from the JSON the folders hold; no torch."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

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
    std = statistics.pstdev(values)  # as eval.json and the published code (np.std) compute it
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def by_model(group: Group) -> dict[tuple[str, str], dict[str, dict[int, list[Folder]]]]:
    """(dataset, model) → method → IPC → the evaluated folders."""
    table: dict[tuple[str, str], dict[str, dict[int, list[Folder]]]] = {}
    for r in group.members:
        for model in (r.evaluation or {}).get("models", {}):
            by_method = table.setdefault((r.dataset, model), {})
            by_method.setdefault(r.label, {}).setdefault(r.ipc, []).append(r)
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
    difference to it; where the sets were also tested on the first N test images, that column too."""
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
    rows = []
    for label in sorted(by_method, key=method_order):
        cells = [label]
        for i in ipcs:
            r = stats.get(label, {}).get(i)
            accs = [a for s in r["per_seed"] for a in s["runs"]] if r else []
            cells.append(f"{_fmt(accs)} (n={len(r['seeds'])})" if r else "–")
            if against in by_method and i:
                d = r and r.get("paired")
                cells.append(
                    f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['wins']}/{d['n']} runs ahead"
                    + (f"; seeds ± {d['seed_std']:.2f}" if d["seeds"] > 1 else "")
                    + ")"
                    if d
                    else "–"
                )
            if first:
                tested = [a for s in r["per_seed"] for a in s["first"] or []] if r else []
                cells.append(_fmt(tested) if tested else "–")
        rows.append(cells)
    return markdown_table(header, rows)


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
        rows.append(
            [name, f"{r['mean']:.2f} ± {r['std']:.2f}", *extra, len(r["runs"]), f"{r['seconds']:.1f}"]
        )
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
