"""`atomdd …`: parses flags and calls the library; user errors exit with status 2, no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

from atomdd.errors import AtomddError, Interrupted

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(
    p: argparse.ArgumentParser,
    config_cls: type | list,
    skip: Sequence[str] = (),
    title: str = "overrides (default: the published preset for the dataset × IPC × method)",
) -> None:
    """One flag per config field (its `help` metadata the flag's help); a flag left out keeps the
    preset / config-file / default value."""
    group = p.add_argument_group(title)
    for f in _fields(config_cls):
        if f.name in skip:
            continue
        helptext = f.metadata.get("help")
        if f.type in (bool, "bool", "bool | None"):
            group.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        else:
            group.add_argument(_flag(f.name), default=None, metavar=f.name.upper(), help=helptext)


def _settings(args: argparse.Namespace, config_cls: type, own: Sequence[str]) -> tuple[object, dict]:
    """`config_cls` from its defaults, then the --config file, then the flags; unknown keys are an
    error naming the valid ones. Returns it and the file's values for the command's `own` keys."""
    from atomdd.config import apply_overrides, load_config_file

    file_values = load_config_file(args.config) if args.config else {}
    mine = {k: file_values.pop(k) for k in own if k in file_values}
    cfg = apply_overrides(config_cls(), file_values, "config key")
    return apply_overrides(cfg, _overrides(args, config_cls), "config key"), mine


def _fields(config: type | list) -> list:
    return config if isinstance(config, list) else list(dataclasses.fields(config))


def _overrides(args: argparse.Namespace, config_cls: type | list, skip: Sequence[str] = ()) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in _fields(config_cls)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }


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
            f"{k}={v!r}" + (f" ∈ {{{', '.join(map(str, spec.choices[k]))}}}" if k in spec.choices else "")
            for k, v in spec.options.items()
        )
        print(f"{spec.name:<12} {spec.description}")
        if opts:
            print(f"{'':<12} options: {opts}")
    return 0


_DISTILL_OWN = ("dataset", "ipc", "method", "iterations", "seed", "data_root")


@command
def cmd_distill(args: argparse.Namespace) -> int:
    from atomdd.distillation.config import flat_fields
    from atomdd.distillation.driver import distill
    from atomdd.signals import stop_on_signals

    overrides = _overrides(args, flat_fields(), skip=_DISTILL_OWN)
    overrides |= {
        k: getattr(args, k) for k in ("iterations", "seed", "data_root") if getattr(args, k) is not None
    }
    with stop_on_signals() as stop:
        result = distill(
            dataset=args.dataset,
            ipc=args.ipc,
            method=args.method,
            out=args.out,
            resume=args.resume,
            quiet=args.quiet,
            config_file=args.config,
            stop=stop,
            **overrides,
        )
    if not args.quiet:
        print(f"wrote {len(result.labels)} synthetic images to {args.out}")
    return 0


@command
def cmd_coreset(args: argparse.Namespace) -> int:
    from atomdd.coreset import select
    from atomdd.settings import CoresetConfig

    cfg, own = _settings(args, CoresetConfig, ("dataset", "ipc"))
    dataset = args.dataset or own.get("dataset")
    ipc = args.ipc if args.ipc is not None else own.get("ipc")
    if not dataset or ipc is None:
        raise AtomddError("coreset needs a dataset and an ipc: --dataset NAME --ipc N (or both in --config)")
    result = select(dataset, int(ipc), cfg, data_root=args.data_root)
    result.save(args.out)
    print(f"wrote {len(result.labels)} {cfg.method} images ({ipc} per class) to {args.out}")
    return 0


@command
def cmd_evaluate(args: argparse.Namespace) -> int:
    from atomdd import evaluate as ev
    from atomdd.models import parse_models
    from atomdd.report import eval_table
    from atomdd.sets import load_any
    from atomdd.settings import EvalConfig

    cfg, own = _settings(args, EvalConfig, ("models",))
    models = parse_models(args.models or own.get("models") or "convnet")
    if args.whole:
        if not args.dataset:
            raise AtomddError("--whole needs --dataset NAME")
        report = ev.evaluate_whole(
            args.dataset, models, cfg, data_root=args.data_root, out_dir=args.out, zca=args.zca
        )
    else:
        if not args.path:
            raise AtomddError(
                "give the folder of a synthetic set (or a peer's .pt with --dataset), or --whole"
            )
        syn = load_any(args.path, dataset=args.dataset, data_root=args.data_root, zca=args.zca)
        report = ev.evaluate_set(
            syn, models, cfg, data_root=args.data_root, out_dir=args.out or _set_dir(args.path)
        )
    print(eval_table(report))
    return 0


def _set_dir(path: str) -> str | None:
    from pathlib import Path

    p = Path(path)
    return str(p) if p.is_dir() else None


@command
def cmd_nas(args: argparse.Namespace) -> int:
    from atomdd.nas import NasSettings, run_search, search_space
    from atomdd.report import nas_table
    from atomdd.settings import dsa_ops

    if args.workers < 1 or min(args.epochs, args.truth_epochs, args.early_epochs) < 1:
        raise AtomddError("--workers and every epoch count must be at least 1")
    dsa_ops(args.dsa)
    space = search_space(args.space)
    settings = NasSettings(
        dataset=args.dataset,
        proxies=tuple(args.proxy),
        space=tuple(map(str, space)),
        space_name=args.space if not os.path.isfile(args.space) else os.path.basename(args.space),
        epochs=args.epochs,
        truth_epochs=args.truth_epochs,
        early_epochs=args.early_epochs,
        seeds=tuple(args.seeds),
        ipc=args.ipc,
        dsa=args.dsa,
        zca=args.zca,
        device=args.device,
        data_root=args.data_root,
    )
    log = None if args.quiet else lambda line: print(line, flush=True)
    report = run_search(settings, args.out, workers=args.workers, truth_dir=args.truth_dir, log=log)
    print(nas_table(report))
    return 0


@command
def cmd_demo(args: argparse.Namespace) -> int:
    from atomdd.demo import run_demo

    run_demo(out=args.out, iterations=args.iterations, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from atomdd import __version__
    from atomdd.distillation.config import flat_fields
    from atomdd.settings import CoresetConfig, EvalConfig

    parser = argparse.ArgumentParser(prog="atomdd", description="Dataset distillation: ATOM, DataDAM, DM.")
    parser.add_argument("--version", action="version", version=f"atomdd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets, whether they are found locally, and where")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--data-root", default=None, help="folder holding MNIST/, cifar-10-batches-py/, ... (or $ATOMDD_DATA)"
    )

    sub.add_parser("models", help="list models and their options")

    p = sub.add_parser("distill", help="distil a dataset into a few synthetic images per class")
    p.add_argument("--dataset", default=None, help="default: digits (or the config file's)")
    p.add_argument("--ipc", type=int, default=None, help="images per class (default 10)")
    p.add_argument("--method", default=None, help="atom (default) | atom-channel | datadam | dm")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--config", default=None, help="YAML/TOML file of config values")
    p.add_argument("--quiet", action="store_true")
    _add_config_flags(p, flat_fields(), skip=_DISTILL_OWN)

    p = sub.add_parser("coreset", help="select real images per class: random, herding or k-center")
    p.add_argument("--dataset", default=None, help="required (here or in --config)")
    p.add_argument("--ipc", type=int, default=None, help="images per class; required (here or in --config)")
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--config", default=None, help="YAML/TOML file of coreset settings (and dataset, ipc)")
    _add_config_flags(p, CoresetConfig, title="coreset settings (over --config's)")

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
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="where eval.json goes (default: the set's folder)")
    p.add_argument("--config", default=None, help="YAML/TOML file of evaluation settings (and models)")
    _add_config_flags(p, EvalConfig, title="evaluation settings (default: DM's protocol; over --config's)")

    p = sub.add_parser("nas", help="rank a space of ConvNets by training on proxies; compare with the truth")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--proxy", nargs="+", required=True, help="set folders (distilled or coreset), random, early-stop"
    )
    p.add_argument(
        "--space", default="small", help="small | cifar-cpu | full | FILE (a model reference a line)"
    )
    p.add_argument("--epochs", type=int, default=300, help="training epochs on a proxy set (default 300)")
    p.add_argument("--truth-epochs", type=int, default=30, help="epochs on the whole data (default 30)")
    p.add_argument("--early-epochs", type=int, default=1, help="the early-stop proxy's epochs (default 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one model per architecture × seed")
    p.add_argument("--ipc", type=int, default=10, help="random proxy's images per class without a set folder")
    p.add_argument(
        "--dsa", default="color_crop_cutout_flip_scale_rotate", help="training augmentation, or none"
    )
    p.add_argument("--zca", action="store_true", help="whole data, random and early stop ZCA-whitened")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        "--truth-dir", default=None, help="where the whole-data results are cached (default OUT/truth)"
    )
    p.add_argument("--out", required=True, help="results.jsonl, nas.json, nas.png go here")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="ATOM on the embedded digits data, then the standard evaluation")
    p.add_argument("--out", default="atomdd-demo")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # the entry point, not the library, picks the backend
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    try:
        return COMMANDS[args.command](args)
    except AtomddError as e:
        print(f"atomdd: error: {e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        print("atomdd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
