"""`atomdd grid` with this repository's folder for results: the grid goes to
benchmarks/results/accuracy-<dataset>-s<iterations>-e<epochs>/ unless --out says otherwise.

Every other flag is `atomdd grid`'s (`atomdd grid --help`). The flags this script had before the
command existed still work, with a warning: --steps (now --iterations), --runs (--repeats) and
--report (--only-table).

    # the budget the official code was re-run with (reference.md)
    python benchmarks/accuracy.py --data-root DATA --iterations 200 --epochs 300 --repeats 3
    # longer: judge methods apart
    python benchmarks/accuracy.py --data-root DATA --iterations 1000 --epochs 300 --repeats 5 --seeds 0 1 2
"""

from __future__ import annotations

import sys

OLD = {"--steps": "--iterations", "--report": "--only-table"}  # --runs: `atomdd grid` takes it


def grid_argv(argv: list[str]) -> list[str]:
    """`atomdd grid`'s arguments: the old flags renamed (with a warning), the default --out."""
    from atomdd.cli import build_parser
    from atomdd.flags import settings_from
    from atomdd.grid import GridSettings

    new = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in OLD:
            print(f"accuracy.py: {name} is now {OLD[name]}", file=sys.stderr)
            arg = OLD[name] + eq + value
        new.append(arg)
    if "--out" not in (a.partition("=")[0] for a in new):
        grid, _ = settings_from(build_parser().parse_args(["grid", "--out", "-", *new]), GridSettings)
        new += ["--out", f"benchmarks/results/accuracy-{grid.dataset}-s{grid.iterations}-e{grid.epochs}"]
    return ["grid", *new]


if __name__ == "__main__":
    from atomdd.cli import main

    sys.exit(main(grid_argv(sys.argv[1:])))
