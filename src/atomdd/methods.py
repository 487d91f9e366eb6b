"""Every distillation method in one place: its loss weights, the settings it changes beyond them,
the evaluation its published figures were made with, its help text and its place in the tables.

ATOM, its channel-only variant, DataDAM and DM are one loss with other weights (`matching.py`);
the `*-code` presets are those methods as their published code runs them, every difference from
our defaults an ordinary setting a user can switch back (docs/reproduce.md); the `-plus` presets add
the family's ideas beyond the loss (docs/beyond.md). The order here is the
order of the report's tables (after the coresets). No torch at import: the CLI lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from atomdd.errors import unknown_name
from atomdd.settings import CORESET_METHODS, POOL_DEFAULT, MatchConfig


@dataclass(frozen=True)
class Method:
    name: str
    match: MatchConfig  # the loss's weights, powers and layers
    help: str
    # distillation settings beyond the loss, over the dataset × IPC preset (flat config keys; a
    # backbone option such as norm folds into the preset's model)
    settings: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    evaluation: str = ""  # the evaluation preset (settings.EVAL_PRESETS) of its published figures
    batch_real: int = 64  # real images per class per step, the published setting


def _frozen(**settings: Any) -> MappingProxyType:
    return MappingProxyType(settings)


# What the published DataDAM code runs (docs/reproduce.md): a batch-norm ConvNet with all classes'
# real images in one forward call and all synthetic images in another, attention power 1 on the
# activations of every block but the last, the initial images whitened again by a ZCA refitted on
# them (where the data is whitened), 20 000 iterations.
_DATADAM_CODE = _frozen(norm="batchnorm", bn_batch="all", zca_refit=True, iterations=20000)

# What DANCE and NCFM add beyond their loss (docs/beyond.md): factor-2 images, the step's network
# from the dataset's default pool of trained networks (`atomdd pool`) mixed with its initial
# weights, and the calibration term (`MatchConfig.calib`, their weight 1)
_BEYOND = _frozen(factor=2, pool_dir=POOL_DEFAULT, pool_interp=True)

_LIST = (
    Method(
        "dm",
        MatchConfig(spatial=0.0, channel=0.0, embedding=1.0, scale=1.0),
        "DM: the class means of the final embedding alone",
        batch_real=256,
    ),
    Method(
        "datadam",
        MatchConfig(spatial=1.0, channel=0.0, embedding=0.01),
        "DataDAM: spatial attention of every block but the last, plus λ·embedding",
    ),
    Method(
        "atom-channel",
        MatchConfig(spatial=0.0, channel=1.0, embedding=0.01),
        "ATOM's channel attention alone, plus λ·embedding",
    ),
    # λ as DataDAM's 0.01: on CIFAR-10 0.1 lost 2 points at IPC 10 and drove the pixels 2–5× further
    # from real images (docs/cifar10.md); MNIST keeps the 0.1 its ablation chose (ATOM_LAMBDA)
    Method(
        "atom",
        MatchConfig(spatial=1.0, channel=1.0, embedding=0.01),
        "ATOM: spatial and channel attention of every block but the last, plus λ·embedding",
    ),
    Method(
        "dm-code",
        MatchConfig(spatial=0.0, channel=0.0, embedding=1.0, scale=1.0),
        "DM as its published code runs: instance-norm ConvNet, no ZCA, 256 real images a class, "
        "20 000 iterations",
        settings=_frozen(zca=False, iterations=20000),
        evaluation="dm-code",
        batch_real=256,
    ),
    Method(
        "datadam-code",
        MatchConfig(spatial=1.0, channel=0.0, embedding=0.01, p_spatial=1.0, p_channel=1.0),
        "DataDAM as its published code runs: batch-norm ConvNet with one call for all classes' "
        "real images, attention power 1, the ZCA refit of the initial images, 20 000 iterations",
        settings=_DATADAM_CODE,
        evaluation="datadam-code",
    ),
    Method(
        "atom-code",
        MatchConfig(spatial=1.0, channel=1.0, embedding=0.01, p_spatial=1.0, p_channel=1.0),
        "ATOM in DataDAM's published code: datadam-code with the channel term added (same power and layers)",
        settings=_DATADAM_CODE,
        evaluation="datadam-code",
    ),
    Method(
        "dm-plus",
        MatchConfig(spatial=0.0, channel=0.0, embedding=1.0, scale=1.0, calib=1.0),
        "DM with the family's ideas beyond the loss: factor-2 images, the dataset's default pool of "
        "trained networks with interpolation, calibration 1 (needs `atomdd pool`; docs/beyond.md)",
        settings=_BEYOND,
        batch_real=256,
    ),
    Method(
        "atom-plus",
        MatchConfig(spatial=1.0, channel=1.0, embedding=0.01, calib=1.0),
        "ATOM with what dm-plus adds to DM",
        settings=_BEYOND,
    ),
)
METHODS: dict[str, Method] = {m.name: m for m in _LIST}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("method", name, list(METHODS)) from None


def method_order(label: str) -> tuple[int, str]:
    """Where a method's row goes in a table: the coresets, then `METHODS` in its order; other
    labels (a grid's variants such as `atom_embedding_0.01`) after, by name."""
    order = (*CORESET_METHODS, *METHODS)
    return (order.index(label) if label in order else len(order), label)
