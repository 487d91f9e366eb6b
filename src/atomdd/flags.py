"""Config dataclasses as command-line flags: one flag per field, then the precedence defaults <
--config file < flags, with unknown keys an error naming the valid ones. Every command that runs
(`distill`, `coreset`, `evaluate`, `nas`, `grid`) gets its flags and its `--config` from here.

A flag's help is its field's `help` metadata and the value it takes now (the default, or the
preset's); each setting also answers to its underscore spelling (`--lr_img`, as researchers paste
it from the published code) and to the published code's name where that differs (`PUBLISHED`):
aliases that work but that `--help` does not list (`Help`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from atomdd.config import field_defaults

# the published code's (DC/DSA/DM/DataDAM `main_*.py`) flag for a setting, where its name differs
PUBLISHED = {
    "data_root": ("data_path",),
    "iterations": ("Iteration",),
    "repeats": ("num_eval",),
    "epochs": ("epoch_eval_train",),
    "dsa": ("dsa_strategy",),
    "batch_size": ("batch_train",),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_names(name: str) -> list[str]:
    """The flags of setting `name`: `--lr-img` (the one `--help` shows), then its aliases
    `--lr_img` and the published code's names."""
    names = [_flag(name), *(["--" + name] if "_" in name else [])]
    return names + ["--" + alias for alias in PUBLISHED.get(name, ())]


class Help(argparse.HelpFormatter):
    """Help that lists each flag under its first name (and its --no- form): the aliases of
    `option_names` work, but would double every line."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        long = [o for o in action.option_strings if o.startswith("--")]
        if len(long) > 1:
            action = copy.copy(action)
            shown = (long[0], "--no-" + long[0][2:])
            action.option_strings = [o for o in action.option_strings if o in shown or o not in long]
        return super()._format_action_invocation(action)


def shown_value(value: Any) -> str:
    """A setting's value as `--help` and `--print-config` say it."""
    if value is None:
        return "unset"
    if value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


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
    now: Mapping[str, str] | None = None,
) -> None:
    """One flag per config field, under the names `option_names` gives (its `help` metadata the
    flag's help, with the value it takes now: `now[name]`, e.g. "preset: 0.01", else the field's
    default; a tuple field takes several values); a flag left out keeps the preset / config-file /
    default value. A renamed field's old name (`RENAMED`) is a hidden flag that warns."""
    group = p.add_argument_group(title)
    fields = _fields(config_cls)
    defaults = field_defaults(fields)
    for f in fields:
        if f.name in skip:
            continue
        value = (now or {}).get(f.name) or (
            f"default: {shown_value(defaults[f.name])}" if f.name in defaults else ""
        )
        helptext = f"{f.metadata.get('help', '')} ({value})" if value else f.metadata.get("help")
        if f.type in (bool, "bool", "bool | None"):
            group.add_argument(
                *option_names(f.name), action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        else:
            nargs = "+" if _is_tuple(f) else None
            group.add_argument(
                *option_names(f.name), default=None, nargs=nargs, metavar=f.name.upper(), help=helptext
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
