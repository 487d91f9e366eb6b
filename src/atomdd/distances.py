"""The distance the matching loss takes between a class's mean statistics of the real and the
synthetic images (`matching.matching_loss`): a small function of two K×D tensors (a row per class)
returning a 0-d tensor, registered under the name `MatchConfig.distance` (`--distance`) selects.

A new distance is a function here and its name in `DISTANCES` (docs/architecture.md walks through
one). It must be differentiable in the synthetic side and sum over classes, as the loss does. No
torch at import (the settings check the name without it): a distance that needs `torch.*` imports
it inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def squared_l2(syn: Any, real: Any) -> Any:
    """‖syn − real‖² summed over classes: the published methods' distance (DM, DataDAM, ATOM)."""
    return (syn - real).pow(2).sum()


DISTANCES: dict[str, Callable[[Any, Any], Any]] = {
    "squared-l2": squared_l2,
}
DEFAULT = "squared-l2"
