"""What people read, made from folders (`atomdd.folders`), never from a live run: markdown tables
(`tables`), charts (`charts`), pictures of sets and attention maps (`images`, the one part that
needs torch, imported only where a set must be drawn) and the report page (`page`).

`atomdd.report.report(paths, out)` writes `out/report.md` (`atomdd report`); `import atomdd.report`
loads no torch.
"""

from atomdd.report.page import report

__all__ = ["report"]
