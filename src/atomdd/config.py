"""Plain config values: dataclasses filled from presets, then a YAML/TOML file, then flags.

Unknown keys are an error (a typo must not silently fall back to a default), and values are
coerced to the field's type so a config file and a flag mean the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError, renamed


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping from a .yaml/.yml/.toml/.json file."""
    path = Path(path)
    if not path.is_file():
        raise AtomddError(f"config file not found: {path}")
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AtomddError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            # libyaml when present: the same safe loader, 100× faster, and it limits nesting itself
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        else:
            raise AtomddError(f"config file {path}: use a .yaml, .yml, .toml or .json file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise AtomddError(f"config file {path} does not parse: {e}") from None
    except RecursionError:  # found by fuzzing: "[[[[…" ten thousand deep
        raise AtomddError(
            f"config file {path} is nested too deeply to be a flat mapping of settings"
        ) from None
    if not isinstance(data, dict):
        raise AtomddError(f"config file {path} must hold a mapping of key: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def field_defaults(fields: list) -> dict[str, Any]:
    """Each field's default, without making the dataclass (whose checks may load more, e.g. torch)."""
    out = {}
    for f in fields:
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_text(values: dict[str, Any]) -> str:
    """`values` as a YAML config file that `load_config_file` reads back (`--print-config`)."""
    import yaml

    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def coerce_value(name: str, value: Any, hint: Any) -> Any:
    """`value` (from a config file or a flag) as type `hint`, or an `AtomddError` naming `name`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]: a list (flags, a file's list) or one value
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce_value(name, v, typing.get_args(hint)[0]) for v in items)
    if isinstance(value, (list, dict)) or (isinstance(value, bool) and hint in (int, float)):
        # a config file's `iterations: true` (which ran one step) or `dataset: [cifar10]`
        raise AtomddError(f"{name}={value!r}: expected {getattr(hint, '__name__', hint)}")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if value not in (0, 1):  # `zca: 5` is a typo, not "yes"
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            number = float(value)
            if not math.isfinite(number):
                raise AtomddError(f"{name}={value!r}: expected a finite number")
            return number
        if hint is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise AtomddError(f"{name}={value!r}: expected {getattr(hint, '__name__', hint)}") from None
    return value


def coerce(cls: type, values: dict[str, Any], what: str = "option") -> dict[str, Any]:
    """`values` for the fields of dataclass `cls`, each coerced to its field's type; a renamed
    setting (`cls.RENAMED`, old name → new) warns and takes its new name; an unknown key is an error
    naming the valid ones."""
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old in values:
            renamed(old, new)
            values = {(new if k == old else k): v for k, v in values.items()}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise AtomddError(f"unknown {what}(s) {unknown}; valid: {', '.join(names)}")
    return {k: coerce_value(k, v, hints[k]) for k, v in values.items()}


def build(cls: type, values: dict[str, Any], what: str = "option") -> Any:
    """Dataclass `cls` from `values` (`coerce`d), its defaults for the rest; checked once."""
    return cls(**coerce(cls, values, what))


def apply_overrides(obj: Any, overrides: dict[str, Any], what: str = "option") -> Any:
    """A copy of dataclass `obj` with `overrides` (`coerce`d) applied."""
    return dataclasses.replace(obj, **coerce(type(obj), overrides, what))
