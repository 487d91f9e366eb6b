"""Config dataclasses as command-line flags: one flag per field, then the precedence defaults <
--config file < flags, with unknown keys an error naming the valid ones."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(
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


def settings_from(args: argparse.Namespace, config_cls: type, own: Sequence[str]) -> tuple[object, dict]:
    """`config_cls` from its defaults, then the --config file, then the flags; unknown keys are an
    error naming the valid ones. Returns it and the file's values for the command's `own` keys."""
    from atomdd.config import apply_overrides, load_config_file

    file_values = load_config_file(args.config) if args.config else {}
    mine = {k: file_values.pop(k) for k in own if k in file_values}
    flags = overrides(args, config_cls)
    cfg = apply_overrides(config_cls(), file_values | flags, "config key")
    if getattr(cfg, "preset", ""):  # a preset's settings (EvalConfig's) come first
        cfg = apply_overrides(config_cls.from_preset(cfg.preset), file_values, "config key")
        cfg = apply_overrides(cfg, flags, "config key")
    return cfg, mine


def _fields(config: type | list) -> list:
    return config if isinstance(config, list) else list(dataclasses.fields(config))


def overrides(args: argparse.Namespace, config_cls: type | list, skip: Sequence[str] = ()) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in _fields(config_cls)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }
