"""atomdd: dataset distillation with attention mixing (ATOM), DataDAM and DM as one engine."""

__version__ = "0.1.0"

from atomdd.distill import distill  # noqa: E402  (the function shadows the module name, on purpose)
from atomdd.sets import SyntheticSet, load_synthetic  # noqa: E402

__all__ = ["SyntheticSet", "__version__", "distill", "load_synthetic"]
