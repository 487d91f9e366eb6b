"""The report page's old home, kept for code that imports it: use `atomdd.report.report`."""

import warnings

from atomdd.report.page import report

warnings.warn(
    "atomdd.reporting is now atomdd.report (from atomdd.report import report)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["report"]
