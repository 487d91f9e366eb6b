"""`atomdd …`: parses flags and calls the library; user errors exit with status 2, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from atomdd import parallel
from atomdd.errors import AtomddError, Interrupted
from atomdd.flags import (
    Help,
    add_config_flags,
    field_defaults,
    option_names,
    overrides,
    settings_from,
    shown_value,
)
from atomdd.io import user_cache

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_datasets(args: argparse.Namespace) -> int:
    from atomdd.data import DATASETS, load_dataset
    from atomdd.data.download import locate

    if args.name:
        info = locate(args.name, args.data_root)
        if info["found"]:
            info |= load_dataset(args.name, args.data_root).summary()
        print(json.dumps(info, indent=2))
        return 0
    rows = [locate(name, args.data_root) for name in DATASETS]
    print(f"{'dataset':<14} {'found':<6} {'classes':>7} {'C×H×W':>9}  path / description")
    for r in rows:
        size = r.get("image_size")
        shape = f"{r.get('channels') or '?'}×{size}×{size}" if size else "any"
        print(
            f"{r['name']:<14} {'yes' if r['found'] else 'no':<6} {r.get('classes') or 'any':>7} {shape:>9}  "
            f"{r['path']}  — {r['description']}"
        )
    return 0


@command
def cmd_models(args: argparse.Namespace) -> int:
    from atomdd.models import MODELS

    for spec in MODELS.values():
        opts = ", ".join(
            f"{k}={v!r}"
            + (f" ∈ {{{', '.join(map(str, spec.choices[k]))}}}" if k in spec.choices else "")
            + (f" ∈ [{spec.ranges[k][0]}, {spec.ranges[k][1]}]" if k in spec.ranges else "")
            for k, v in spec.options.items()
        )
        print(f"{spec.name:<12} {spec.description}")
        if opts:
            print(f"{'':<12} options: {opts}")
    return 0


@command
def cmd_methods(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from atomdd.methods import METHODS
    from atomdd.settings import EVAL_PRESETS, MatchConfig

    default = asdict(MatchConfig())
    for m in METHODS.values():
        loss = {
            k: v
            for k, v in asdict(m.match).items()
            if k in ("spatial", "channel", "embedding") or v != default[k]
        }
        sets = {"batch_real": m.batch_real, **m.settings}
        print(f"{m.name:<13} {m.help}")
        shown = (f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in loss.items())
        print(f"{'':<13} loss: {', '.join(shown)}")
        print(f"{'':<13} sets: {', '.join(f'{k}={v}' for k, v in sets.items())}")
        if m.evaluation:
            print(f"{'':<13} evaluate with: --preset {m.evaluation} ({EVAL_PRESETS[m.evaluation].help})")
    return 0


_DISTILL_OWN = ("dataset", "ipc", "method", "iterations", "seed", "data_root")


@command
def cmd_distill(args: argparse.Namespace) -> int:
    from atomdd.api import distill
    from atomdd.distillation.config import flat_fields
    from atomdd.signals import stop_on_signals

    values = overrides(args, flat_fields(), skip=_DISTILL_OWN)
    values |= {
        k: getattr(args, k) for k in ("iterations", "seed", "data_root") if getattr(args, k) is not None
    }
    if args.print_config:
        from atomdd.distillation.config import make_config

        return _print_config(make_config(args.dataset, args.ipc, args.method, args.config, **values).flat())
    with stop_on_signals() as stop:
        result = distill(
            dataset=args.dataset,
            ipc=args.ipc,
            method=args.method,
            out=args.out,
            resume="auto" if args.resume_or_start else args.resume,
            overwrite=args.overwrite,
            quiet=args.quiet,
            config_file=args.config,
            stop=stop,
            tensorboard=args.tensorboard,
            **values,
        )
    if not args.quiet:
        print(f"wrote {len(result.labels)} synthetic images to {args.out}")
    return 0


@command
def cmd_pool(args: argparse.Namespace) -> int:
    from atomdd.pool import build
    from atomdd.settings import PoolSettings

    settings, _ = settings_from(args, PoolSettings)
    if args.print_config:
        return _print_config(dataclasses.asdict(settings))
    say = _lines(args.quiet)
    folder, record = build(settings, args.out, progress=not args.quiet, say=say)
    accuracy = ", ".join(f"{d['accuracy']:.2f}" for d in record["done"])
    print(f"pool of {record['members']} {record['model']} networks in {folder} (test accuracy %: {accuracy})")
    return 0


@command
def cmd_coreset(args: argparse.Namespace) -> int:
    from atomdd.config import coerce_value
    from atomdd.coreset import select
    from atomdd.settings import CoresetConfig

    cfg, own = settings_from(args, CoresetConfig, ("dataset", "ipc"))
    dataset = args.dataset or own.get("dataset")
    ipc = args.ipc if args.ipc is not None else own.get("ipc")
    if not dataset or ipc is None:
        raise AtomddError("coreset needs a dataset and an ipc: --dataset NAME --ipc N (or both in --config)")
    dataset, ipc = coerce_value("dataset", dataset, str), coerce_value("ipc", ipc, int)
    if args.print_config:
        return _print_config({"dataset": dataset, "ipc": ipc} | dataclasses.asdict(cfg))
    from atomdd.folders.layout import claim
    from atomdd.lock import hold

    basics = {"kind": "coreset", "method": cfg.method, "ipc": ipc, "seed": cfg.seed, "dataset": dataset}
    with hold(args.out):  # the folder is this command's from the first check to the last write
        claim(args.out, args.overwrite, same=basics)  # before minutes of selection
        result = select(dataset, ipc, cfg, data_root=args.data_root, progress=not args.quiet)
        same = result.meta | {"dataset": result.dataset, "zca": result.preprocess_meta.get("zca")}
        claim(args.out, args.overwrite, same=same)
        result.save(args.out)
    print(f"wrote {len(result.labels)} {cfg.method} images ({ipc} per class) to {args.out}")
    return 0


# where `evaluate --whole` keeps its result without --out
WHOLE_CACHE = user_cache("whole")


@command
def cmd_evaluate(args: argparse.Namespace) -> int:
    from atomdd import evaluate as ev
    from atomdd.models import parse_models
    from atomdd.progress import silenced, stage
    from atomdd.report.tables import eval_table
    from atomdd.sets import load_any
    from atomdd.settings import EvalConfig, eval_preset

    cfg, own = settings_from(args, EvalConfig, ("models",))
    preset_model = eval_preset(cfg.preset).models if cfg.preset else "convnet"
    models = parse_models(args.models or own.get("models") or preset_model)
    if args.print_config:
        return _print_config({"models": ",".join(map(str, models))} | dataclasses.asdict(cfg))
    tb = None
    if args.tensorboard:  # checked before the evaluation, not after it
        from atomdd.tblog import EvalLog

        tb = EvalLog(args.tensorboard)
    on_epoch = tb.epoch if tb is not None else None
    if args.whole:
        if not args.dataset:
            raise AtomddError("--whole needs --dataset NAME")
        # kept (hours of training, reused by a rerun), not in the working folder: in the user's cache
        out = args.out or str(WHOLE_CACHE / f"{args.dataset}{'-zca' if args.zca else ''}")
        print(f"atomdd: the whole-data evaluation is kept in {out} (--out DIR: elsewhere)", file=sys.stderr)
        result = ev.evaluate_whole(
            args.dataset,
            models,
            cfg,
            data_root=args.data_root,
            out_dir=out,
            zca=args.zca,
            progress=not args.quiet,
            on_epoch=on_epoch,
        )
    else:
        if not args.path:
            raise AtomddError(
                "give the folder of a synthetic set (or a peer's .pt with --dataset), or --whole"
            )
        out = args.out or (args.path if Path(args.path).is_dir() else None)
        if out is None:  # said at the start, not after an hour
            print(
                f"atomdd: {args.path} has no folder of its own: its evaluation is kept nowhere; pass --out "
                "DIR to keep it (eval.json; a rerun then reuses every finished model)",
                file=sys.stderr,
            )
        with silenced(args.quiet), stage("evaluate", f"reading {args.path}"):
            syn = load_any(args.path, dataset=args.dataset, data_root=args.data_root, zca=args.zca)
        result = ev.evaluate_set(
            syn,
            models,
            cfg,
            data_root=args.data_root,
            out_dir=out,
            progress=not args.quiet,
            on_epoch=on_epoch,
        )
    if tb is not None:
        tb.final(result)
    print(eval_table(result))
    if out:
        print(f"results in {out}/eval.json", file=sys.stderr)
    return 0


def _lines(quiet: bool) -> Callable[[str], None] | None:
    """The progress lines a long command prints as it goes (pool, nas, grid): none when quiet."""
    return None if quiet else lambda line: print(line, flush=True)


def _print_config(values: dict[str, Any]) -> int:
    """`--print-config`: the settings as a config file `--config` reads back; nothing is run."""
    from atomdd.config import config_text

    print(config_text(values), end="")
    return 0


@command
def cmd_report(args: argparse.Namespace) -> int:
    from atomdd.report.page import report

    page = report(args.paths, args.out, title=args.title, fmt=args.format)
    print(f"wrote {page} and its figures")
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from atomdd.export import export
    from atomdd.sets import load_any

    syn = load_any(args.path, dataset=args.dataset, data_root=args.data_root, zca=args.zca)
    count = len(syn.labels) * syn.factor**2  # what an export holds: the decoded images
    print(f"wrote {export(syn, args.format, args.out)} ({count} images, {args.format})")
    return 0


@command
def cmd_show(args: argparse.Namespace) -> int:
    from atomdd.report.images import show

    print(f"wrote {show(args.path, args.out, args.klass, args.attention)}")
    return 0


@command
def cmd_nas(args: argparse.Namespace) -> int:
    from atomdd.config import load_config_file
    from atomdd.nas import NasSettings, run_search, search_space
    from atomdd.report.tables import nas_table

    in_file = load_config_file(args.config).get("space") if args.config else None
    name = str(args.space or in_file or NasSettings.space_name)
    space = tuple(map(str, search_space(name)))
    given = {"space": space, "space_name": os.path.basename(name) if os.path.isfile(name) else name}
    settings, _ = settings_from(args, NasSettings, own=("space",), skip=_NAS_OWN, given=given)
    if args.print_config:
        return _print_config(
            {"space": name} | {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NAS_OWN}
        )
    log = _lines(args.quiet)
    print(nas_table(run_search(settings, args.out, workers=args.workers, truth_dir=args.truth_dir, log=log)))
    return 0


@command
def cmd_grid(args: argparse.Namespace) -> int:
    from atomdd.grid import GridSettings, run_grid, tabulate

    grid, _ = settings_from(args, GridSettings)
    if args.print_config:
        return _print_config(dataclasses.asdict(grid))
    say = _lines(args.quiet)
    table = tabulate(args.out, grid) if args.only_table else run_grid(grid, args.out, args.quiet, say)
    print(table)
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from atomdd.demo import DEMO, DEMO_FULL, run_demo

    budget = DEMO_FULL if args.full else DEMO
    given = {k: getattr(args, k) for k in ("iterations", "repeats", "epochs") if getattr(args, k) is not None}
    run_demo(out=args.out, budget=dataclasses.replace(budget, **given), quiet=args.quiet)
    return 0


# nas: --space is a name or a file the command turns into the model references it holds
_NAS_OWN = ("space", "space_name")
_TB_HELP = "also write TensorBoard event files to DIR (local files only; needs the tensorboard extra)"
_QUIET_HELP = "no progress (by default a bar on a terminal, a line every 20 s in a log or a pipe)"
_PRINT_HELP = "print the settings this command would run with (preset, then --config, then flags) and exit"


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Where the datasets are, and where their decode caches go: every command that reads data."""
    p.add_argument(
        *option_names("data_root"),
        default=None,
        help="folder holding MNIST/, cifar-10-batches-py/, ... (or $ATOMDD_DATA)",
    )
    _cache_flag(p)


def _cache_flag(p: argparse.ArgumentParser) -> None:
    """--cache-dir; a command whose settings hold `data_root` (nas, grid) gets --data-root from them."""
    p.add_argument(
        *option_names("cache_dir"),
        default=None,
        metavar="DIR",
        help="where decoded image folders and Tiny ImageNet are cached (or $ATOMDD_CACHE; default: beside "
        "the images, decoded in memory where that is read-only)",
    )


def _runs_flags(p: argparse.ArgumentParser, config: str) -> None:
    """--config, --print-config and --quiet: every command that runs."""
    p.add_argument("--config", default=None, metavar="FILE", help=f"YAML/TOML file of {config}")
    p.add_argument(*option_names("print_config"), action="store_true", help=_PRINT_HELP)
    p.add_argument("--quiet", action="store_true", help=_QUIET_HELP)


def _help_asked(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _datasets(argv: Sequence[str]) -> str:
    """The registered datasets, where `--help` is asked for (the registry loads torch), else the
    command that lists them."""
    if not _help_asked(argv):
        return "`atomdd datasets` lists them"
    from atomdd.data import DATASETS

    return " | ".join(DATASETS)


def _distill_now(argv: Sequence[str]) -> tuple[str, dict[str, str]]:
    """What `distill --help` says each setting is now: the preset of the --dataset, --ipc and
    --method given with it (digits, 10, atom where none), the defaults elsewhere; and the title
    that says which preset. No torch: the presets and the defaults are plain values."""
    from atomdd.distillation.config import flat_fields, preset
    from atomdd.errors import AtomddError

    pre = argparse.ArgumentParser(add_help=False)
    for name in ("dataset", "ipc", "method"):
        pre.add_argument(*option_names(name))
    given, _ = pre.parse_known_args(list(argv))
    chosen = (given.dataset or "digits", given.ipc or "10", given.method or "atom")
    try:
        values = preset(chosen[0], int(chosen[1]), chosen[2])
    except (AtomddError, ValueError):  # the parse proper reports it
        chosen, values = ("digits", "10", "atom"), preset("digits", 10, "atom")
    defaults = field_defaults(flat_fields())
    now = {k: f"default: {shown_value(v)}" for k, v in defaults.items()}
    now |= {k: f"preset: {shown_value(v)}" for k, v in values.items() if k in defaults}
    title = (
        f"settings (values: the preset for {chosen[0]}, IPC {chosen[1]}, {chosen[2]}; --dataset, --ipc, "
        "--method with --help show another's; --config and these flags override it)"
    )
    return title, now


def _own(p: argparse.ArgumentParser, fields: list, name: str, now: dict[str, str], **kwargs: Any) -> None:
    """A flag a command parses itself, with its field's help (`help` metadata) and value now."""
    f = next(f for f in fields if f.name == name)
    text = f"{f.metadata['help']} ({now[name]})" if name in now else f.metadata["help"]
    p.add_argument(*option_names(name), default=None, help=text, **kwargs)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of every command. `argv`, the arguments about to be parsed, only tunes `--help`:
    `distill --help` shows the preset of the --dataset, --ipc and --method given, and the dataset
    names are looked up (the registry loads torch) only where help is asked for."""
    from atomdd import __version__
    from atomdd.demo import DEMO, DEMO_FULL
    from atomdd.distillation.config import flat_fields
    from atomdd.folders.layout import FIGURE_FORMATS
    from atomdd.grid import GridSettings
    from atomdd.methods import METHODS
    from atomdd.nas import NasSettings
    from atomdd.settings import CORESET_METHODS, CoresetConfig, EvalConfig, PoolSettings, TrainConfig

    datasets = _datasets(argv)
    # `--print-config` runs nothing, so it needs no --out
    needs_out = not {"--print-config", "--print_config"} & set(argv)
    parser = argparse.ArgumentParser(
        prog="atomdd", description="Dataset distillation: ATOM, DataDAM, DM.", formatter_class=Help
    )
    parser.add_argument("--version", action="version", version=f"atomdd {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=Help),
    )

    p = sub.add_parser("datasets", help="list datasets, whether they are found locally, and where")
    p.add_argument("name", nargs="?")
    _data_flags(p)

    sub.add_parser("models", help="list models and their options")
    sub.add_parser("methods", help="list distillation methods and presets, and what each sets")

    title, now = _distill_now(argv)
    now["dataset"] = f"{now['dataset']}; {datasets}"
    now["method"] = f"{now['method']}; {' | '.join(METHODS)}"
    fields = flat_fields()
    p = sub.add_parser(
        "distill",
        help="distil a dataset into a few synthetic images per class",
        usage="atomdd distill --out DIR [--dataset NAME] [--ipc N] [--method NAME] [options]",
    )
    p.add_argument("--out", required=needs_out, metavar="DIR", help="the run's folder")
    _own(p, fields, "dataset", now, metavar="NAME")
    _own(p, fields, "ipc", now, type=int, metavar="N")
    _own(p, fields, "method", now, metavar="NAME")
    _own(p, fields, "iterations", now, type=int, metavar="N")
    _own(p, fields, "seed", now, type=int, metavar="N")
    _data_flags(p)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        *option_names("resume_or_start"),
        action="store_true",
        help="continue from the checkpoint in --out if there is one, else start (for retry loops)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a set or run already in --out (default: refuse)"
    )
    _runs_flags(p, "settings (any key below, and dataset, ipc, method)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help=_TB_HELP)
    add_config_flags(p, fields, skip=_DISTILL_OWN, title=title, now=now)

    p = sub.add_parser(
        "pool",
        help="train a pool of networks on the real data: the trained matching source and teacher",
        usage="atomdd pool [--dataset NAME] [--model REF] [--members N] [--epochs N] [--out DIR] [options]",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the pool's folder (default: DATA_ROOT/pools/<dataset>-<model>[-zca])",
    )
    _cache_flag(p)
    _runs_flags(p, "pool settings")
    now = _with_choices(PoolSettings, dataset=datasets)
    add_config_flags(p, PoolSettings, title="pool settings (over --config's)", now=now)

    p = sub.add_parser(
        "coreset",
        help="select real images per class: random, herding or k-center",
        usage="atomdd coreset --dataset NAME --ipc N --out DIR [--method NAME] [options]",
    )
    p.add_argument(
        "--dataset", default=None, metavar="NAME", help=f"required (here or in --config): {datasets}"
    )
    p.add_argument("--ipc", type=int, default=None, help="images per class; required (here or in --config)")
    p.add_argument("--out", required=needs_out, metavar="DIR", help="the set's folder")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different set or run in --out (default: refuse)"
    )
    _data_flags(p)
    _runs_flags(p, "coreset settings (and dataset, ipc)")
    add_config_flags(p, CoresetConfig, title="coreset settings (over --config's)")

    p = sub.add_parser(
        "evaluate",
        help="train fresh models on a set and test them on the real test set",
        usage="atomdd evaluate (SET | --whole --dataset NAME) [--models LIST] [--repeats N] [options]",
    )
    p.add_argument("path", nargs="?", help="a run folder (synthetic.safetensors) or a peer's .pt")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model references, e.g. 'convnet(depth=2,norm=batchnorm),alexnet' "
        "(default convnet, or the --preset's; `atomdd models` lists the options)",
    )
    p.add_argument("--whole", action="store_true", help="train on the whole train set (upper bound)")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help=f"the dataset of a peer's .pt, or for --whole: {datasets}",
    )
    p.add_argument("--zca", action="store_true", help="a peer's .pt was made with ZCA")
    _data_flags(p)
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where eval.json and eval.jsonl go (default: the set's folder; a peer's .pt: nowhere; --whole: "
        "~/.cache/atomdd/whole/DATASET)",
    )
    _runs_flags(p, "evaluation settings (and models)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help=_TB_HELP)
    add_config_flags(p, EvalConfig, title="evaluation settings (default: DM's protocol; over --config's)")

    p = sub.add_parser("report", help="runs, evaluations, grids and NAS results → report.md with figures")
    p.add_argument(
        "paths", nargs="+", metavar="RUN_DIR", help="run folders, grids (ipc*/<method>-seed*/) or NAS folders"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and its figures")
    p.add_argument("--title", default="Report", help="the page's heading")
    p.add_argument(
        "--format", default="png", choices=FIGURE_FORMATS, help="the charts' format: png, or vector pdf / svg"
    )

    p = sub.add_parser("export", help="write a set for other tools: PNG folders, a DC/DM .pt, HF datasets")
    p.add_argument("path", help="a set's folder (synthetic.safetensors), the file, or a peer's .pt")
    p.add_argument(
        "--format",
        required=True,
        choices=("imagefolder", "pt", "hf"),
        help="imagefolder: a PNG per image in a folder per class (for viewing; lossy); pt: the "
        "published code's {'data': [[images, labels]]} in model space; hf: a Hugging Face datasets "
        "folder (the hf extra)",
    )
    p.add_argument("--out", required=True, help="the folder (or .pt file) to write")
    p.add_argument("--dataset", default=None, metavar="NAME", help="the dataset of a peer's .pt")
    p.add_argument("--zca", action="store_true", help="a peer's .pt was made with ZCA")
    _data_flags(p)

    p = sub.add_parser("show", help="a set's images as a PNG grid (a row per class), or one class enlarged")
    p.add_argument("path", help="a set's folder (synthetic.safetensors) or the file")
    p.add_argument("--class", dest="klass", default=None, metavar="K", help="one class, by index or name")
    p.add_argument(
        "--attention",
        action="store_true",
        help="a run's attention maps instead (real vs synthetic, every class), drawn again from its folder",
    )
    p.add_argument(
        "--out", default=None, help="the figure: .png, or .pdf / .svg (default: show.png in the set's folder)"
    )

    p = sub.add_parser(
        "nas",
        help="rank a space of ConvNets by training on proxies; compare with the truth",
        usage="atomdd nas --dataset NAME --proxies PROXY [PROXY ...] --out DIR [options]",
    )
    p.add_argument(
        "--space", default=None, help="small (default) | cifar-cpu | full | FILE (a model reference a line)"
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        *option_names("truth_dir"), default=None, help="whole-data results cache (default OUT/truth)"
    )
    p.add_argument("--out", required=needs_out, metavar="DIR", help="results.jsonl, nas.json, nas.png: here")
    _cache_flag(p)
    _runs_flags(p, "search settings (and space)")
    add_config_flags(
        p,
        NasSettings,
        skip=_NAS_OWN,
        title="search settings (over --config's)",
        now=_with_choices(NasSettings, dataset=datasets),
    )

    p = sub.add_parser(
        "grid",
        help="methods × IPC × seeds: make, evaluate and tabulate each set, resumably (paired Δ)",
        usage="atomdd grid --out DIR [--dataset NAME] [--methods SPEC ...] [--ipc N ...] [options]",
    )
    p.add_argument(
        "--out",
        required=needs_out,
        metavar="DIR",
        help="the grid's folder: ipc<N>/<method>-seed<S>/, accuracy.json",
    )
    p.add_argument(
        *option_names("only_table"), action="store_true", help="only tabulate the sets finished under --out"
    )
    p.add_argument(
        "--progress", action="store_true", help=argparse.SUPPRESS
    )  # on by default now; old commands keep parsing
    _cache_flag(p)
    _runs_flags(p, "grid settings")
    methods = " | ".join((*CORESET_METHODS, *METHODS))
    now = _with_choices(GridSettings, dataset=datasets, methods=methods)
    add_config_flags(p, GridSettings, title="grid settings (over --config's)", now=now)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline in a minute or two: ATOM on digits, evaluated against random real images",
    )
    p.add_argument(
        "--out", default="atomdd-demo", metavar="DIR", help="where the two sets go (default: atomdd-demo)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help=f"the fuller demo: {DEMO_FULL.describe()} (several minutes)",
    )
    for name in ("iterations", "repeats", "epochs"):
        f = next(f for f in (*flat_fields(), *dataclasses.fields(TrainConfig)) if f.name == name)
        p.add_argument(
            *option_names(name),
            type=int,
            default=None,
            metavar="N",
            help=f"{f.metadata['help']} (demo: {getattr(DEMO, name)}; --full: {getattr(DEMO_FULL, name)})",
        )
    p.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    return parser


def _with_choices(config_cls: type, **choices: str) -> dict[str, str]:
    """What the help says some settings of `config_cls` are now: the default, then the choices."""
    defaults = field_defaults(dataclasses.fields(config_cls))
    return {k: f"default: {shown_value(defaults[k])}; {text}" for k, text in choices.items()}


# the commands that only read folders (or list names): they load neither the data nor torch
_READERS = ("report", "methods")


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[None]:
    """What a command that reads data and trains gets from its entry point: the CPU allocator tuned
    and its threads fitted to the cores other processes leave (process-wide, so never the library's
    doing), and a missing dataset's message naming --download where the command has that flag."""
    if args.command in _READERS:
        yield
        return
    from atomdd.data import offer_download
    from atomdd.data.cache import cache_folder
    from atomdd.hardware import threads_fitted_to_load, tune_cpu_allocator

    tune_cpu_allocator()
    with (
        offer_download(hasattr(args, "download")),
        cache_folder(getattr(args, "cache_dir", None)),
        threads_fitted_to_load(lambda line: print(f"atomdd: {line}", file=sys.stderr)),
    ):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    entry = argv is None  # the `atomdd` script, `python -m atomdd`; not a caller such as a test
    argv = sys.argv[1:] if entry else list(argv)
    args = build_parser(argv).parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # the entry point, not the library, picks the backend
    who = parallel.quiet_other_ranks()  # under torchrun, " (rank r of w)" for the error lines
    from atomdd.signals import stop_on_signals

    # SIGINT, SIGTERM and SIGHUP stop a command cleanly (a distillation checkpoints first); once
    # one came, or the command ended, the rest are ignored until the process has exited where
    # `main` is the entry point (no `argv`: the `atomdd` script, `python -m atomdd`), not where a
    # caller (a test) runs it
    with stop_on_signals(until_exit=entry):
        try:
            with _engine(args):
                return COMMANDS[args.command](args)
        except AtomddError as e:
            if getattr(e, "result", None) is not None:  # a write failed after the work: show the work
                from atomdd.report.tables import eval_table

                print(eval_table(e.result))
            print(f"atomdd: error{who}: {e}", file=sys.stderr)
            return 128 + e.signum if isinstance(e, Interrupted) else 2  # SIGINT 130, SIGTERM 143
        except KeyboardInterrupt as e:  # `signals.Stopped` carries its signal; Ctrl-C elsewhere
            print(f"atomdd: interrupted{who}", file=sys.stderr)
            return 128 + getattr(e, "signum", signal.SIGINT)
        finally:
            parallel.leave()


if __name__ == "__main__":
    sys.exit(main())
