"""`atomdd …`: parses flags and calls the library; user errors exit with status 2, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

from atomdd import parallel
from atomdd.errors import AtomddError, Interrupted
from atomdd.flags import add_config_flags, overrides, settings_from

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
    print(f"{'dataset':<14} {'found':<6} {'classes':>7} {'shape':>10}  path / description")
    for r in rows:
        shape = f"{r.get('channels') or '?'}×{r.get('image_size') or '?'}"
        print(
            f"{r['name']:<14} {'yes' if r['found'] else 'no':<6} {r.get('classes') or '?':>7} {shape:>10}  "
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
    from atomdd.folders.layout import claim
    from atomdd.lock import hold

    basics = {"kind": "coreset", "method": cfg.method, "ipc": ipc, "seed": cfg.seed, "dataset": dataset}
    with hold(args.out):  # the folder is this command's from the first check to the last write
        claim(args.out, args.overwrite, same=basics)  # before minutes of selection
        result = select(dataset, ipc, cfg, data_root=args.data_root)
        same = result.meta | {"dataset": result.dataset, "zca": result.preprocess_meta.get("zca")}
        claim(args.out, args.overwrite, same=same)
        result.save(args.out)
    print(f"wrote {len(result.labels)} {cfg.method} images ({ipc} per class) to {args.out}")
    return 0


@command
def cmd_evaluate(args: argparse.Namespace) -> int:
    from atomdd import evaluate as ev
    from atomdd.models import parse_models
    from atomdd.report.tables import eval_table
    from atomdd.sets import load_any
    from atomdd.settings import EvalConfig, eval_preset

    cfg, own = settings_from(args, EvalConfig, ("models",))
    preset_model = eval_preset(cfg.preset).models if cfg.preset else "convnet"
    models = parse_models(args.models or own.get("models") or preset_model)
    tb = None
    if args.tensorboard:  # checked before the evaluation, not after it
        from atomdd.tblog import EvalLog

        tb = EvalLog(args.tensorboard)
    on_epoch = tb.epoch if tb is not None else None
    if args.whole:
        if not args.dataset:
            raise AtomddError("--whole needs --dataset NAME")
        out = args.out or f"whole-{args.dataset}{'-zca' if args.zca else ''}"  # its result is kept too
        result = ev.evaluate_whole(
            args.dataset,
            models,
            cfg,
            data_root=args.data_root,
            out_dir=out,
            zca=args.zca,
            progress=True,
            on_epoch=on_epoch,
        )
        print(f"results in {out}/eval.json", file=sys.stderr)
    else:
        if not args.path:
            raise AtomddError(
                "give the folder of a synthetic set (or a peer's .pt with --dataset), or --whole"
            )
        syn = load_any(args.path, dataset=args.dataset, data_root=args.data_root, zca=args.zca)
        out = args.out or _set_dir(args.path)
        result = ev.evaluate_set(
            syn, models, cfg, data_root=args.data_root, out_dir=out, progress=True, on_epoch=on_epoch
        )
    if tb is not None:
        tb.final(result)
    print(eval_table(result))
    return 0


def _set_dir(path: str) -> str | None:
    from pathlib import Path

    p = Path(path)
    return str(p) if p.is_dir() else None


@command
def cmd_report(args: argparse.Namespace) -> int:
    from atomdd.report.page import report

    page = report(args.paths, args.out, title=args.title)
    print(f"wrote {page} and its figures")
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from atomdd.export import export
    from atomdd.sets import load_any

    syn = load_any(args.path, dataset=args.dataset, data_root=args.data_root, zca=args.zca)
    print(f"wrote {export(syn, args.format, args.out)} ({len(syn.labels)} images, {args.format})")
    return 0


@command
def cmd_show(args: argparse.Namespace) -> int:
    from atomdd.report.images import show

    print(f"wrote {show(args.path, args.out, args.klass)}")
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
    log = None if args.quiet else lambda line: print(line, flush=True)
    print(nas_table(run_search(settings, args.out, workers=args.workers, truth_dir=args.truth_dir, log=log)))
    return 0


@command
def cmd_grid(args: argparse.Namespace) -> int:
    from atomdd.grid import GridSettings, run_grid, tabulate

    grid, _ = settings_from(args, GridSettings)
    say = None if args.quiet else lambda line: print(line, flush=True)
    table = tabulate(args.out, grid) if args.only_table else run_grid(grid, args.out, not args.progress, say)
    print(table)
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from atomdd.demo import run_demo

    run_demo(out=args.out, iterations=args.iterations, quiet=args.quiet)
    return 0


# nas: --space is a name or a file the command turns into the model references it holds
_NAS_OWN = ("space", "space_name")
_TB_HELP = "also write TensorBoard event files to DIR (local files only; needs the tensorboard extra)"


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Where the datasets are, and where their decode caches go: every command that reads data."""
    p.add_argument(
        "--data-root", default=None, help="folder holding MNIST/, cifar-10-batches-py/, ... (or $ATOMDD_DATA)"
    )
    _cache_flag(p)


def _cache_flag(p: argparse.ArgumentParser) -> None:
    """--cache-dir; a command whose settings hold `data_root` (nas, grid) gets --data-root from them."""
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where decoded image folders and Tiny ImageNet are cached (or $ATOMDD_CACHE; default: beside "
        "the images, decoded in memory where that is read-only)",
    )


def build_parser() -> argparse.ArgumentParser:
    from atomdd import __version__
    from atomdd.distillation.config import flat_fields
    from atomdd.grid import GridSettings
    from atomdd.methods import METHODS
    from atomdd.nas import NasSettings
    from atomdd.settings import CoresetConfig, EvalConfig

    parser = argparse.ArgumentParser(prog="atomdd", description="Dataset distillation: ATOM, DataDAM, DM.")
    parser.add_argument("--version", action="version", version=f"atomdd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets, whether they are found locally, and where")
    p.add_argument("name", nargs="?")
    _data_flags(p)

    sub.add_parser("models", help="list models and their options")
    sub.add_parser("methods", help="list distillation methods and presets, and what each sets")

    p = sub.add_parser("distill", help="distil a dataset into a few synthetic images per class")
    p.add_argument("--dataset", default=None, help="default: digits (or the config file's)")
    p.add_argument("--ipc", type=int, default=None, help="images per class (default 10)")
    p.add_argument("--method", default=None, help=f"{' | '.join(METHODS)} (default atom; `atomdd methods`)")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--out", required=True, help="output folder")
    _data_flags(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue from the checkpoint in --out if there is one, else start (for retry loops)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a set or run already in --out (default: refuse)"
    )
    p.add_argument("--config", default=None, help="YAML/TOML file of config values")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help=_TB_HELP)
    add_config_flags(p, flat_fields(), skip=_DISTILL_OWN)

    p = sub.add_parser("coreset", help="select real images per class: random, herding or k-center")
    p.add_argument("--dataset", default=None, help="required (here or in --config)")
    p.add_argument("--ipc", type=int, default=None, help="images per class; required (here or in --config)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different set or run in --out (default: refuse)"
    )
    _data_flags(p)
    p.add_argument("--config", default=None, help="YAML/TOML file of coreset settings (and dataset, ipc)")
    add_config_flags(p, CoresetConfig, title="coreset settings (over --config's)")

    p = sub.add_parser("evaluate", help="train fresh models on a set and test them on the real test set")
    p.add_argument("path", nargs="?", help="a run folder (synthetic.safetensors) or a peer's .pt")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model references, e.g. 'convnet(depth=2,norm=batchnorm),alexnet' "
        "(default convnet; `atomdd models` lists the options)",
    )
    p.add_argument("--whole", action="store_true", help="train on the whole train set (upper bound)")
    p.add_argument("--dataset", default=None, help="the dataset of a peer's .pt, or for --whole")
    p.add_argument("--zca", action="store_true", help="a peer's .pt was made with ZCA")
    _data_flags(p)
    p.add_argument(
        "--out",
        default=None,
        help="where eval.json and eval.jsonl go (default: the set's folder; with --whole, whole-DATASET)",
    )
    p.add_argument("--config", default=None, help="YAML/TOML file of evaluation settings (and models)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help=_TB_HELP)
    add_config_flags(p, EvalConfig, title="evaluation settings (default: DM's protocol; over --config's)")

    p = sub.add_parser("report", help="runs, evaluations, grids and NAS results → report.md with PNG figures")
    p.add_argument(
        "paths", nargs="+", metavar="RUN_DIR", help="run folders, grids (ipc*/<method>-seed*/) or NAS folders"
    )
    p.add_argument("--out", required=True, help="folder for report.md and its figures")
    p.add_argument("--title", default="Report", help="the page's heading")

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
    p.add_argument("--dataset", default=None, help="the dataset of a peer's .pt")
    p.add_argument("--zca", action="store_true", help="a peer's .pt was made with ZCA")
    _data_flags(p)

    p = sub.add_parser("show", help="a set's images as a PNG grid (a row per class), or one class enlarged")
    p.add_argument("path", help="a set's folder (synthetic.safetensors) or the file")
    p.add_argument("--class", dest="klass", default=None, metavar="K", help="one class, by index or name")
    p.add_argument("--out", default=None, help="the PNG (default: show.png in the set's folder)")

    p = sub.add_parser("nas", help="rank a space of ConvNets by training on proxies; compare with the truth")
    p.add_argument(
        "--space", default=None, help="small (default) | cifar-cpu | full | FILE (a model reference a line)"
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--truth-dir", default=None, help="whole-data results cache (default OUT/truth)")
    p.add_argument("--out", required=True, help="results.jsonl, nas.json, nas.png go here")
    p.add_argument("--config", default=None, help="YAML/TOML file of search settings (and space)")
    _cache_flag(p)
    p.add_argument("--quiet", action="store_true")
    add_config_flags(p, NasSettings, skip=_NAS_OWN, title="search settings (over --config's)")

    p = sub.add_parser(
        "grid", help="methods × IPC × seeds: make, evaluate and tabulate each set, resumably (paired Δ)"
    )
    p.add_argument("--out", required=True, help="the grid's folder: ipc<N>/<method>-seed<S>/, accuracy.json")
    p.add_argument("--only-table", action="store_true", help="only tabulate the sets finished under --out")
    p.add_argument("--progress", action="store_true", help="show each distillation's progress")
    p.add_argument("--config", default=None, help="YAML/TOML file of grid settings")
    _cache_flag(p)
    p.add_argument("--quiet", action="store_true", help="no line per finished job")
    add_config_flags(p, GridSettings, title="grid settings (over --config's)")

    p = sub.add_parser("demo", help="ATOM on the embedded digits data, then the standard evaluation")
    p.add_argument("--out", default="atomdd-demo")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--quiet", action="store_true")
    return parser


# the commands that only read folders (or list names): they load neither the data nor torch
_READERS = ("report", "methods")


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[None]:
    """What a command that reads data and trains gets from its entry point: the CPU allocator tuned
    (process-wide, so never the library's doing), and a missing dataset's message naming
    --download where the command has that flag."""
    if args.command in _READERS:
        yield
        return
    from atomdd.data import offer_download
    from atomdd.data.cache import cache_folder
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    with offer_download(hasattr(args, "download")), cache_folder(getattr(args, "cache_dir", None)):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # the entry point, not the library, picks the backend
    who = parallel.quiet_other_ranks()  # under torchrun, " (rank r of w)" for the error lines
    from atomdd.signals import stop_on_signals

    # SIGINT, SIGTERM and SIGHUP stop a command cleanly (a distillation checkpoints first); once
    # one came, or the command ended, the rest are ignored until the process has exited where
    # `main` is the entry point (no `argv`: the `atomdd` script, `python -m atomdd`), not where a
    # caller (a test) runs it
    with stop_on_signals(until_exit=argv is None):
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
