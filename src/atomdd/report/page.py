"""`atomdd report`: distillation runs, their evaluations, grids of them and NAS results gathered into
one markdown page (`report.md`) with PNG figures beside it.

Everything is read from folders: a run folder holds run.json (a distillation), eval.json (an
evaluation) or a set file (a coreset); a grid is a folder of `ipc<N>/<method>-seed<S>/` run folders
(`jobs.py` makes them); a folder holding `nas.json` adds an architecture-search table. Numbers
are printed as their JSON files hold them, beside the config, commit and versions that made them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from atomdd.folders.read import Group, Run, gather, method_order
from atomdd.report.images import markdown_table


def _fmt(values: list[float]) -> str:
    std = statistics.pstdev(values)  # as eval.json and the published code (np.std) compute it
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def accuracy(group: Group) -> dict[tuple[str, str], dict[str, dict[int, list[Run]]]]:
    """(dataset, model) → method → IPC → the evaluated runs."""
    table: dict[tuple[str, str], dict[str, dict[int, list[Run]]]] = {}
    for r in group.runs:
        for model in (r.evaluation or {}).get("models", {}):
            by_method = table.setdefault((r.dataset, model), {})
            by_method.setdefault(r.label, {}).setdefault(r.ipc, []).append(r)
    return table


def accuracy_table(by_method: dict[str, dict[int, list[Run]]], model: str, against: str = "atom") -> str:
    """Rows methods, columns IPC (the published tables' layout): mean ± std over every evaluation
    model of every seed, n = sets (seeds); where the grid has `against`, each method's paired
    difference to it; where the runs were also tested on the first N test images, that column too."""
    from atomdd.grid import paired, summary

    ipcs = sorted({i for by_ipc in by_method.values() for i in by_ipc}, key=lambda i: (i == 0, i))

    def stats(label: str, ipc: int) -> dict | None:
        per_seed = []
        for r in by_method.get(label, {}).get(ipc, []):
            m = r.evaluation["models"][model]
            per_seed.append({"seed": r.seed, "runs": m["runs"], "first": m.get("first", {}).get("runs")})
        return summary(per_seed) if per_seed else None

    every = [r for by_ipc in by_method.values() for runs in by_ipc.values() for r in runs]
    limits = {r.evaluation["models"][model].get("first", {}).get("images") for r in every} - {None}
    first = f"first {limits.pop()}" if len(limits) == 1 else None
    header = ["method"]
    for i in ipcs:
        col = f"IPC {i}" if i else "whole data"
        header += [col]
        header += [f"method − {against}, {col}"] if against in by_method and i else []
        header += [f"{col}, {first} test images"] if first else []
    refs = {i: stats(against, i) for i in ipcs}
    rows = []
    for label in sorted(by_method, key=method_order):
        cells = [label]
        for i in ipcs:
            r, ref = stats(label, i), refs[i]
            runs = [a for s in r["per_seed"] for a in s["runs"]] if r else []
            cells.append(f"{_fmt(runs)} (n={len(r['seeds'])})" if r else "–")
            if against in by_method and i:
                d = r and ref and label != against and paired(r, ref, against)
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


def _budget(group: Group) -> str:
    steps = sorted({r.run.get("config", {}).get("iterations") for r in group.runs if r.run} - {None})
    evals = sorted(
        {
            (r.evaluation["config"]["epochs"], len(m["runs"]))
            for r in group.runs
            if r.evaluation
            for m in r.evaluation["models"].values()
        }
    )
    parts = []
    if steps:
        parts.append("distillation steps " + ", ".join(map(str, steps)))
    if evals:
        parts.append("evaluation " + ", ".join(f"{n} models × {e} epochs" for e, n in evals))
    return "; ".join(parts)


def _commit(d: dict | None) -> str:
    git = (d or {}).get("git")
    if not git:
        return "not recorded"
    return git["commit"][:10] + (" (dirty)" if git.get("dirty") else "")


def _link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def runs_table(group: Group, page_dir: Path) -> str:
    """Every evaluated run's numbers as eval.json holds them, with the commit and versions."""
    rows = []
    for r in sorted(group.runs, key=lambda r: (r.dataset, r.ipc, method_order(r.label), r.seed)):
        ev = r.evaluation or {}
        v = r.run.get("versions") or ev.get("versions") or {}
        where = f"[{_name(r, group)}]({_link(r.folder, page_dir)})"
        commit = _commit(r.run) if r.run else _commit(ev)
        made = f"{commit}, atomdd {v.get('atomdd', '?')}, torch {v.get('torch', '?')}"
        if not ev:
            rows.append([where, r.ipc, r.seed, "–", "not evaluated", "", "", made])
        for model, m in ev.get("models", {}).items():
            runs = ", ".join(map(repr, m["runs"]))
            rows.append([where, r.ipc, r.seed, model, runs, repr(m["mean"]), repr(m["std"]), made])
    header = ["run", "IPC", "seed", "model", "accuracy of each model (%)", "mean", "std", "made by"]
    return markdown_table(header, rows)


def _name(r: Run, group: Group) -> str:
    return r.folder.relative_to(group.folder).as_posix() if group.folder else r.folder.name


def configs_section(group: Group) -> str:
    """The distinct distillation and evaluation configs of a group (seed aside), and which runs."""
    out = []
    for kind, get in (("distillation", lambda r: r.run.get("config")), ("evaluation", _eval_config)):
        distinct: dict[str, list[str]] = {}
        for r in group.runs:
            cfg = get(r)
            if cfg:
                key = json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True)
                distinct.setdefault(key, []).append(_name(r, group))
        for n, (key, names) in enumerate(distinct.items(), 1):
            out.append(
                f"<details><summary>{kind} config {n} (seed aside) of {len(names)} run"
                f"{'s' if len(names) > 1 else ''}</summary>\n\n"
                f"Runs: {', '.join(names)}\n\n```json\n{json.dumps(json.loads(key), indent=1)}\n```\n"
                "</details>\n"
            )
    commands = sorted({r.run["command"] for r in group.runs if r.run.get("command")})
    if commands:
        out.append("Commands that made these runs:\n\n```\n" + "\n".join(commands) + "\n```\n")
    return "\n".join(out)


def _eval_config(r: Run) -> dict | None:
    return r.evaluation and r.evaluation["config"] | {"device": r.evaluation.get("device")}


def nas_section(folder: Path, out: Path | None) -> str:
    """The architecture search in `folder/nas.json` in the published layout, and its scatter PNG."""
    from atomdd.report.images import nas_table

    head = f"### Architecture search: {folder.name}\n"
    try:
        lines = [head, nas_table(json.loads((folder / "nas.json").read_text()))]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return (
            head
            + f"\n`nas.json` could not be read ({type(e).__name__}: {e}): is it a file `atomdd nas` wrote?\n"
        )
    for png in sorted(folder.glob("*.png")):
        if out is not None:
            shutil.copyfile(png, out / f"nas-{folder.name}-{png.name}")
            lines.append(f"\n![{png.stem}](nas-{folder.name}-{png.name})")
    return "\n".join(lines) + "\n"


def render(
    paths: Sequence[str | Path],
    page: Path,
    figures: bool = True,
    title: str = "Report",
    intro: str = "",
    evaluated_only: bool = False,
) -> str:
    """The markdown of the report over `paths`, to be written at `page` (links are relative to it).
    With `figures`, PNGs are drawn or copied into the page's folder; with `evaluated_only`, runs
    without an eval.json (e.g. still running) are left out."""
    from atomdd.report import charts as plots

    groups, nas = gather(paths)
    if evaluated_only:
        for group in groups:
            group.runs = [r for r in group.runs if r.evaluation]
        groups = [g for g in groups if g.runs]
    out = page.parent
    md = [f"# {title}\n", *([intro + "\n"] if intro else [])]
    md.append(
        "Accuracy: test accuracy (%) as mean ± std (population std, as eval.json and the published "
        "code compute it) over every evaluation model of every set (n = sets, i.e. distillation seeds); "
        "rows methods, columns images per class (IPC). "
        "Each run's own numbers, as its eval.json holds them, follow each table.\n"
    )
    for group in groups:
        md.append(f"## {group.name}\n")
        if budget := _budget(group):
            md.append(budget.capitalize() + ".\n")
        for (dataset, model), by_method in accuracy(group).items():
            md.append(f"**{dataset}, {model}**\n\n" + accuracy_table(by_method, model) + "\n")
            if figures and len({i for v in by_method.values() for i in v} - {0}) > 1:
                png = plots.accuracy_vs_ipc(by_method, model, out / f"{_slug(group.name)}-{model}-ipc.png")
                md.append(f"![accuracy vs IPC, {dataset}, {model}]({png.name})\n")
        if figures:
            md.extend(plots.run_figures(group, out, _slug(group.name)))
        md.append(f"### Every run of {group.name}\n\n" + runs_table(group, out) + "\n")
        md.append(configs_section(group))
    for folder in nas:
        md.append(nas_section(folder, out if figures else None))
    return "\n".join(md)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def report(paths: Sequence[str | Path], out: str | Path, title: str = "Report") -> Path:
    """Write `out/report.md` and its figures; returns the page's path."""
    from atomdd.io import write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.md"
    write_bytes(page, render(paths, page, figures=True, title=title).encode())
    return page


ACCURACY_PAGE = "docs/accuracy.md"


def accuracy_page(root: str | Path) -> str:
    """docs/accuracy.md of the repository at `root`: the tables of the MNIST long-budget grid and of
    every CIFAR-10 grid under benchmarks/results/, no figures (the page must regenerate exactly)."""
    root = Path(root)
    results = root / "benchmarks" / "results"
    grids = [results / "accuracy-mnist-s1000-e300", *sorted(results.glob("cifar10-*"))]
    intro = (
        "Generated from `benchmarks/results/` by `python benchmarks/accuracy_page.py`, not typed: "
        "edit the results or the generator, never this page (`tests/test_docs.py` regenerates it "
        "and fails on any difference). The story behind these numbers (ablations, paired "
        "differences, what changed a default) is in [accuracy-mnist.md](accuracy-mnist.md); "
        "CIFAR-10 in [cifar10.md](cifar10.md). Each run's folder, linked from its row, holds its "
        "set, run.json, eval.json, metrics.jsonl and (distilled sets) grid.png and attention.png."
    )
    grids = [g for g in grids if g.is_dir()]
    # runs still in progress (no eval.json) are left out, so the page changes only with results
    page = render(
        grids, root / ACCURACY_PAGE, figures=False, title="Accuracy", intro=intro, evaluated_only=True
    )
    return _without_data_paths(page)


def _without_data_paths(text: str) -> str:
    """The data folder the runs read is the user's own `--data-root`: shown as DATA, not as a path;
    a grid's output folder as where it is kept in the repository."""
    text = re.sub(r'("data_root": )"[^"]*"', r'\1"DATA"', text)
    text = re.sub(r"--out \S*?results/", "--out benchmarks/results/", text)
    return re.sub(r"--data-root \S+", "--data-root DATA", text)
