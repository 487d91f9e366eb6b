"""Config dataclasses as command-line flags: one flag per field, then the precedence defaults <
--config file < flags, with unknown keys an error naming the valid ones. Every command that runs
(`distill`, `coreset`, `evaluate`, `nas`, `grid`) gets its flags and its `--config` from here."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Renamed(argparse.Action):
    """A flag's old name: stores into the new one's place, and says it was renamed."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        print(f"atomdd: warning: {option} is now {self.new}; the old name still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _is_tuple(f: dataclasses.Field) -> bool:
    return str(f.type).startswith("tuple[")


def add_config_flags(
    p: argparse.ArgumentParser,
    config_cls: type | list,
    skip: Sequence[str] = (),
    title: str = "overrides (default: the published preset for the dataset × IPC × method)",
) -> None:
    """One flag per config field (its `help` metadata the flag's help; a tuple field takes several
    values); a flag left out keeps the preset / config-file / default value. A renamed field's old
    name (`RENAMED`) is a hidden flag that warns."""
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
            nargs = "+" if _is_tuple(f) else None
            group.add_argument(
                _flag(f.name), default=None, nargs=nargs, metavar=f.name.upper(), help=helptext
            )
    for old, new in getattr(config_cls, "RENAMED", {}).items():  # hidden, stored as the new name
        group.add_argument(_flag(old), dest=new, action=_Renamed, new=_flag(new), help=argparse.SUPPRESS)


def settings_from(
    args: argparse.Namespace,
    config_cls: type,
    own: Sequence[str] = (),
    skip: Sequence[str] = (),
    given: dict[str, Any] | None = None,
) -> tuple[Any, dict]:
    """`config_cls` from its defaults, then the --config file, then the flags, then `given` (what
    the command worked out itself); unknown keys are an error naming the valid ones. Returns it and
    the file's values for the command's `own` keys (not settings of `config_cls`). A preset
    (`EvalConfig.preset`) comes first, under the file and the flags."""
    from atomdd.config import build, load_config_file

    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    mine = {k: file_values.pop(k) for k in own if k in file_values}
    values = file_values | overrides(args, config_cls, skip) | (given or {})
    preset = values.get("preset")
    if preset and hasattr(config_cls, "from_preset"):  # a preset's settings (EvalConfig's) come first
        values = dataclasses.asdict(config_cls.from_preset(preset)) | values
    return build(config_cls, values, "config key"), mine


def _fields(config: type | list) -> list:
    return config if isinstance(config, list) else list(dataclasses.fields(config))


def overrides(args: argparse.Namespace, config_cls: type | list, skip: Sequence[str] = ()) -> dict:
    return {
        f.name: getattr(args, f.name)
        for f in _fields(config_cls)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }
