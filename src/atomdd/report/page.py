"""`atomdd report`: distillation runs, their evaluations, grids of them and architecture searches
gathered into one markdown page (`report.md`) with PNG figures beside it.

Everything is read from folders (`folders.read`): a run folder holds run.json (a distillation),
eval.json (an evaluation) or a set file (a coreset); a grid is a folder of `ipc<N>/<method>-seed<S>/`
folders (`atomdd grid` makes them); a folder holding nas.json adds an architecture-search table.
Numbers are printed as their JSON files hold them, beside the config, commit and versions that made
them. Torch is loaded only to draw the grid of a set that has no grid.png (a coreset).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from atomdd.folders.layout import ATTENTION_PNG, GRID_PNG, NAS_SUMMARY, SET_FILE, safe_name
from atomdd.folders.read import Folder, Group, gather
from atomdd.methods import method_order
from atomdd.report import charts
from atomdd.report.tables import accuracy_table, by_model, markdown_table, nas_table


def _budget(group: Group) -> str:
    steps = sorted({r.run.get("config", {}).get("iterations") for r in group.members if r.run} - {None})
    evals = sorted(
        {
            (r.evaluation["config"]["epochs"], len(m["runs"]))
            for r in group.members
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
    for r in sorted(group.members, key=lambda r: (r.dataset, r.ipc, method_order(r.label), r.seed)):
        ev = r.evaluation or {}
        v = r.run.get("versions") or ev.get("versions") or {}
        where = f"[{_name(r, group)}]({_link(r.path, page_dir)})"
        commit = _commit(r.run) if r.run else _commit(ev)
        made = f"{commit}, atomdd {v.get('atomdd', '?')}, torch {v.get('torch', '?')}"
        if not ev:
            rows.append([where, r.ipc, r.seed, "–", "not evaluated", "", "", made])
        for model, m in ev.get("models", {}).items():
            each = ", ".join(map(repr, m["runs"]))
            rows.append([where, r.ipc, r.seed, model, each, repr(m["mean"]), repr(m["std"]), made])
    header = ["run", "IPC", "seed", "model", "accuracy of each model (%)", "mean", "std", "made by"]
    return markdown_table(header, rows)


def _name(r: Folder, group: Group) -> str:
    return r.path.relative_to(group.folder).as_posix() if group.folder else r.path.name


def configs_section(group: Group) -> str:
    """The distinct distillation and evaluation configs of a group (seed aside), and which runs."""
    out = []
    for kind, get in (("distillation", lambda r: r.run.get("config")), ("evaluation", _eval_config)):
        distinct: dict[str, list[str]] = {}
        for r in group.members:
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
    commands = sorted({r.run["command"] for r in group.members if r.run.get("command")})
    if commands:
        out.append("Commands that made these runs:\n\n```\n" + "\n".join(commands) + "\n```\n")
    return "\n".join(out)


def _eval_config(r: Folder) -> dict | None:
    return r.evaluation and r.evaluation["config"] | {"device": r.evaluation.get("device")}


def nas_section(folder: Path, out: Path | None) -> str:
    """The architecture search in `folder/nas.json` in the published layout, and its PNGs."""
    head = f"### Architecture search: {folder.name}\n"
    try:
        lines = [head, nas_table(json.loads((folder / NAS_SUMMARY).read_text()))]
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


def _lowest_seeds(group: Group) -> list[Folder]:
    """One folder per (dataset, method, IPC): the lowest seed's."""
    best: dict[tuple, Folder] = {}
    for r in group.members:
        key = (r.dataset, r.label, r.ipc)
        if key not in best or r.seed < best[key].seed:
            best[key] = r
    return list(best.values())


def _set_grid(r: Folder, target: Path) -> str | None:
    """The set's grid at `target`: the run's own grid.png copied, else drawn from the set file (a
    coreset; the one place the report loads torch). Its caption, or None without a set."""
    if (r.path / GRID_PNG).exists():
        shutil.copyfile(r.path / GRID_PNG, target)
        return "as the run drew them"
    if not (r.path / SET_FILE).exists():
        return None
    from atomdd.report.images import display_images, save_grid
    from atomdd.sets import load_synthetic

    syn = load_synthetic(r.path)
    images, labels, how = display_images(syn)
    save_grid(images, labels, target, class_names=syn.classes)
    return how


def run_figures(group: Group, out: Path, prefix: str) -> list[str]:
    """Markdown lines of the group's loss curves and each set's grid and attention maps, copied
    beside the page; of a grid, the lowest seed of each (method, IPC) only."""
    members = _lowest_seeds(group) if group.folder is not None else group.members
    chosen = sorted(members, key=lambda r: (r.dataset, r.ipc, method_order(r.label), r.seed))
    md = []
    if png := charts.loss_curves(chosen, out / f"{prefix}-loss.png"):
        md.append(f"![matching loss against step]({png.name})\n")
        which = "the lowest seed of each method" if group.folder is not None else "each run"
        md.append(f"Loss curves: {which} (DM's loss is on another scale).\n")
    for n, r in enumerate(chosen):
        name = f"{prefix}-{r.label}-ipc{r.ipc}-seed{r.seed}" + (f"-{n}" if group.folder is None else "")
        shown = []
        if how := _set_grid(r, out / f"{name}-grid.png"):
            shown.append(f"![synthetic images]({name}-grid.png)\n\nSynthetic images ({how}).\n")
        if (r.path / ATTENTION_PNG).exists():
            shutil.copyfile(r.path / ATTENTION_PNG, out / f"{name}-attention.png")
            shown.append(
                f"![attention maps]({name}-attention.png)\n\nAttention of real vs synthetic images "
                "(step 0's network; spatial maps per matched block, channel profile of the last).\n"
            )
        if shown:
            md.append(f"#### {r.label}, IPC {r.ipc}, seed {r.seed}\n\n" + "\n".join(shown))
    return md


def render(
    paths: Sequence[str | Path],
    page: Path,
    figures: bool = True,
    title: str = "Report",
    intro: str = "",
    evaluated_only: bool = False,
) -> str:
    """The markdown of the report over `paths`, to be written at `page` (links are relative to it).
    With `figures`, PNGs are drawn or copied into the page's folder; with `evaluated_only`, folders
    without an eval.json (e.g. a run still distilling) are left out."""
    groups, nas = gather(paths)
    if evaluated_only:
        for group in groups:
            group.members = [r for r in group.members if r.evaluation]
        groups = [g for g in groups if g.members]
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
        for (dataset, model), by_method in by_model(group).items():
            md.append(f"**{dataset}, {model}**\n\n" + accuracy_table(by_method, model) + "\n")
            if figures and len({i for v in by_method.values() for i in v} - {0}) > 1:
                png = charts.accuracy_vs_ipc(
                    by_method, model, out / f"{safe_name(group.name)}-{model}-ipc.png"
                )
                md.append(f"![accuracy vs IPC, {dataset}, {model}]({png.name})\n")
        if figures:
            md.extend(run_figures(group, out, safe_name(group.name)))
        md.append(f"### Every run of {group.name}\n\n" + runs_table(group, out) + "\n")
        md.append(configs_section(group))
    for folder in nas:
        md.append(nas_section(folder, out if figures else None))
    return "\n".join(md)


def report(paths: Sequence[str | Path], out: str | Path, title: str = "Report") -> Path:
    """Write `out/report.md` and its figures; returns the page's path."""
    from atomdd.io import make_folder, write_bytes

    out = make_folder(out)
    page = out / "report.md"
    write_bytes(page, render(paths, page, figures=True, title=title).encode())
    return page
