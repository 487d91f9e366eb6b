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
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from atomdd.distillation.config import preset, recorded_settings, spec_differences
from atomdd.errors import AtomddError
from atomdd.folders.layout import ATTENTION_PNG, FIGURE_FORMATS, GRID_PNG, NAS_SUMMARY, SET_FILE, safe_name
from atomdd.folders.read import Folder, Group, gather
from atomdd.methods import method_order
from atomdd.report import charts
from atomdd.report.tables import accuracy_table, by_model, markdown_table, nas_table, row_label, row_order


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
        parts.append("evaluation " + ", ".join(f"{n} model{'s' * (n > 1)} × {e} epochs" for e, n in evals))
    return "; ".join(parts)


def _commit(d: dict | None) -> str:
    git = (d or {}).get("git")
    if not git:
        return "not recorded"
    return git["commit"][:10] + (" (dirty)" if git.get("dirty") else "")


def _link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def runs_table(group: Group, page_dir: Path) -> str:
    """Every run's numbers as eval.json holds them (to 0.01, as they were measured), with its row
    label, the commit and versions; a run not evaluated says so."""
    rows = []
    for r in sorted(group.members, key=lambda r: (r.dataset, r.ipc, method_order(r.label), r.seed)):
        ev = r.evaluation or {}
        v = r.run.get("versions") or ev.get("versions") or {}
        where = f"[{_name(r, group)}]({_link(r.path, page_dir)})"
        commit = _commit(r.run) if r.run else _commit(ev)
        made = f"{commit}, atomdd {v.get('atomdd', '?')}, torch {v.get('torch', '?')}"
        label = row_label(r)
        if not ev:
            rows.append([where, label, r.ipc, r.seed, "–", "not evaluated", "", "", made])
        for model, m in ev.get("models", {}).items():
            each = ", ".join(f"{a:.2f}" for a in m["runs"])
            mean, std = f"{m['mean']:.2f}", f"{m['std']:.2f}" if len(m["runs"]) > 1 else "–"
            rows.append([where, label, r.ipc, r.seed, model, each, mean, std, made])
    header = ["run", "row", "IPC", "seed", "model", "accuracy of each model (%)", "mean", "std", "made by"]
    return markdown_table(header, rows)


def _name(r: Folder, group: Group) -> str:
    return r.path.relative_to(group.folder).as_posix() if group.folder else r.path.name


def configs_section(group: Group, page_dir: Path) -> str:
    """The settings of a group's runs: of the distillations, those every run shares beyond its
    preset (each run is otherwise the preset of its dataset, IPC and method, but for what its row
    label's brackets say), and any other that varies; of the evaluations, those all share, then each
    distinct rest; the commands that made them."""
    out = []
    runs = {_name(r, group): recorded_settings(r.run["config"]) for r in group.members if r.run.get("config")}
    labelled = set().union(*(_labelled(r.run["config"]) for r in group.members if r.run.get("config")))
    shared, varying = _split({k: {n: c[k] for n, c in runs.items() if k in c} for k in _keys(runs)}, labelled)
    if runs:
        shared.pop("seed", None)
        out.append(
            f"Distillation settings every run shares: {_settings(shared)}. Each run is otherwise the preset "
            "of its dataset, IPC and method, but for what its row's label says in brackets.\n"
        )
        out += [f"- {n}: {_settings(v)}" for n, v in varying.items()] + ([""] if varying else [])
    evals = {_name(r, group): _eval_config(r) for r in group.members if r.evaluation}
    shared, varying = _split({k: {n: c[k] for n, c in evals.items() if k in c} for k in _keys(evals)}, set())
    if evals:
        out.append(f"Evaluation settings every run shares: {_settings(shared)}.\n")
        out += [f"- {n}: {_settings(v)}" for n, v in varying.items()] + ([""] if varying else [])
    commands = sorted(
        {_relative(r.run["command"], group, page_dir) for r in group.members if r.run.get("command")}
    )
    if commands:
        out.append("Commands that made these runs:\n\n```\n" + "\n".join(commands) + "\n```\n")
    return "\n".join(out)


def _keys(configs: dict[str, dict]) -> list[str]:
    return sorted({k for c in configs.values() for k in c})


def _split(values: dict[str, dict[str, object]], aside: set[str]) -> tuple[dict, dict[str, dict]]:
    """Settings (key → run → value) as those all runs share, and each run's that vary (but those
    `aside`, and the seed: a grid's runs differ in it by design)."""
    runs = {n for v in values.values() for n in v}
    shared = {k: next(iter(v.values())) for k, v in values.items() if len(v) == len(runs) and _same(v)}
    varying: dict[str, dict] = {}
    for k, v in values.items():
        if k not in shared and k not in aside and k != "seed":
            for n, x in v.items():
                varying.setdefault(n, {})[k] = x
    return shared, dict(sorted(varying.items()))


def _same(values: dict[str, object]) -> bool:
    return len({json.dumps(v, sort_keys=True) for v in values.values()}) == 1


def _labelled(config: dict) -> set[str]:
    """The settings a run's row label accounts for: those its preset sets (for its dataset, IPC
    and method), and those it was made with otherwise (the label's brackets)."""
    settings = recorded_settings(config)
    try:
        keys = set(preset(settings["dataset"], int(settings["ipc"]), settings["method"])) | {"model"}
    except (AtomddError, KeyError, TypeError, ValueError):
        return set()
    return keys | set(spec_differences(config) or {})


def _settings(values: dict) -> str:
    shown = {k: "DATA" if k == "data_root" and v else v for k, v in values.items()}  # the user's own folder
    return ", ".join(f"{k} `{json.dumps(v)}`" for k, v in shown.items()) or "none"


def _eval_config(r: Folder) -> dict | None:
    return r.evaluation and r.evaluation["config"] | {"device": r.evaluation.get("device")}


def _relative(command: str, group: Group, page_dir: Path) -> str:
    """A recorded command without this machine's paths: the data root as DATA, a path into the
    group's folder (in whichever checkout it ran) relative to the page, any other absolute path by
    its last part."""
    command = re.sub(r"(--data[-_]root[ =])\S+", r"\1DATA", command)

    def local(m: re.Match) -> str:
        parts = Path(m.group(0)).parts
        if group.folder is not None and group.folder.name in parts:
            inside = parts[len(parts) - parts[::-1].index(group.folder.name) :]
            return _link(group.folder.joinpath(*inside), page_dir)
        return f"…/{parts[-1]}"

    return re.sub(r"(?<![\w.])/[^\s'\"]+", local, command)


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


def run_figures(group: Group, out: Path, prefix: str, fmt: str = "png") -> list[str]:
    """Markdown lines of the group's loss curves (in `fmt`) and each set's grid and attention maps
    (PNG: pictures), copied beside the page; of a grid, the lowest seed of each (method, IPC) only."""
    members = _lowest_seeds(group) if group.folder is not None else group.members
    chosen = sorted(members, key=lambda r: (r.dataset, r.ipc, row_order(row_label(r)), r.seed))
    md = []
    labels = {r.path: row_label(r) for r in chosen}
    if chart := charts.loss_curves(chosen, out / f"{prefix}-loss.{fmt}", labels):
        md.append(f"![matching loss against step]({chart.name})\n")
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
            md.append(f"#### {labels[r.path]}, IPC {r.ipc}, seed {r.seed}\n\n" + "\n".join(shown))
    return md


def render(
    paths: Sequence[str | Path],
    page: Path,
    figures: bool = True,
    title: str = "Report",
    intro: str = "",
    evaluated_only: bool = False,
    fmt: str = "png",
) -> str:
    """The markdown of the report over `paths`, to be written at `page` (links are relative to it).
    With `figures`, charts are drawn in `fmt` (png, or vector pdf / svg) and the sets' pictures
    copied or drawn into the page's folder; with `evaluated_only`, folders without an eval.json
    (e.g. a run still distilling) are named, not tabulated."""
    groups, nas = gather(paths)
    waiting: dict[str, list[str]] = {}
    if evaluated_only:
        for group in groups:
            waiting[group.name] = [_name(r, group) for r in group.members if not r.evaluation]
            group.members = [r for r in group.members if r.evaluation]
    out = page.parent
    md = [f"# {title}\n", *([intro + "\n"] if intro else [])]
    md.append(
        "Accuracy: test accuracy (%) as mean ± std (population std, as eval.json and the published "
        "code compute it) over every evaluation model of every set (n = sets, i.e. distillation seeds); "
        "rows methods, columns images per class (IPC). A row's label is the method as `atomdd grid "
        "--methods` would spell it today: the settings it was made with that today's preset does not "
        "hold are in brackets. Each run's own numbers, as its eval.json holds them, follow each table.\n"
    )
    for group in groups:
        md.append(f"## {group.name}\n")
        if names := waiting.get(group.name):
            md.append(f"Not evaluated yet (no eval.json), so in no table: {', '.join(names)}.\n")
        if not group.members:
            continue
        if budget := _budget(group):
            md.append(budget.capitalize() + ".\n")
        for (dataset, model), by_method in by_model(group).items():
            md.append(f"**{dataset}, {model}**\n\n" + accuracy_table(by_method, model) + "\n")
            if figures and len({i for v in by_method.values() for i in v} - {0}) > 1:
                chart = out / f"{safe_name(group.name)}-{model}-ipc.{fmt}"
                charts.accuracy_vs_ipc(by_method, model, chart, caption=f"{dataset}, {_budget(group)}")
                md.append(f"![accuracy vs IPC, {dataset}, {model}]({chart.name})\n")
        if figures:
            md.extend(run_figures(group, out, safe_name(group.name), fmt))
        md.append(f"### Every run of {group.name}\n\n" + runs_table(group, out) + "\n")
        md.append(configs_section(group, out))
    for folder in nas:
        md.append(nas_section(folder, out if figures else None))
    return "\n".join(md)


def report(paths: Sequence[str | Path], out: str | Path, title: str = "Report", fmt: str = "png") -> Path:
    """Write `out/report.md` and its figures (charts in `fmt`: png, pdf or svg); returns the page."""
    from atomdd.io import make_folder, write_bytes

    if fmt not in FIGURE_FORMATS:
        raise AtomddError(f"figure format {fmt!r}: choose one of {', '.join(FIGURE_FORMATS)}")
    out = make_folder(out)
    page = out / "report.md"
    write_bytes(page, render(paths, page, figures=True, title=title, fmt=fmt).encode())
    return page
