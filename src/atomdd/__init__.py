"""atomdd: dataset distillation with attention mixing (ATOM), DataDAM and DM as one engine.

The root is lazy: `import atomdd` loads no torch; `atomdd.distill`, `atomdd.SyntheticSet` and
`atomdd.load_synthetic` load their modules on first use. `atomdd.distill` is `atomdd.api.distill`,
a function (the distillation code lives in the `atomdd.distillation` package, so no module shadows
it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "distill": "atomdd.api",
    "SyntheticSet": "atomdd.sets",
    "load_synthetic": "atomdd.sets",
}

if TYPE_CHECKING:
    from atomdd.api import distill
    from atomdd.sets import SyntheticSet, load_synthetic


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atomdd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["SyntheticSet", "__version__", "distill", "load_synthetic"]
