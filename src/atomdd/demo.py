"""`atomdd demo`: the whole pipeline on the embedded digits data, in a minute or two on a laptop
CPU: ATOM distils a few images per class, a random subset of real images of the same size is
picked, both are evaluated by the same protocol, and a table shows the difference.

Its budget (`DEMO`: one image per class, 100 steps, 3 models × 300 epochs) is small enough for that
and large enough for a clear win over random; `--full` (`DEMO_FULL`) is the budget the demo had
before: 10 images per class, 200 steps, 5 models × 300 epochs, several minutes. The budgets are
plain values (no torch at import): `--help` shows them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoBudget:
    """What the demo spends: the set's size, the distillation steps, and the evaluation."""

    ipc: int
    iterations: int
    repeats: int
    epochs: int

    def describe(self) -> str:
        return (
            f"{self.ipc} images per class, {self.iterations} distillation steps, {self.repeats} models × "
            f"{self.epochs} epochs"
        )


# one image per class: the cheapest set to distil and to train on, and where distillation gains most
DEMO = DemoBudget(ipc=1, iterations=100, repeats=3, epochs=300)
DEMO_FULL = DemoBudget(ipc=10, iterations=200, repeats=5, epochs=300)


def run_demo(
    out: str | Path = "atomdd-demo", budget: DemoBudget = DEMO, quiet: bool = False
) -> dict[str, dict]:
    """Distil, pick, evaluate both and print the table; returns the two evaluations by row name."""
    from atomdd.api import distill
    from atomdd.coreset import select
    from atomdd.evaluate import evaluate_set
    from atomdd.folders.layout import ATTENTION_PNG, GRID_PNG
    from atomdd.report.tables import markdown_table
    from atomdd.settings import EvalConfig

    out, t0, b = Path(out), time.perf_counter(), budget
    say = (lambda *a: None) if quiet else print
    say(
        f"1/3 distilling digits to {b.ipc} images per class with ATOM ({b.iterations} steps) → {out / 'atom'}"
    )
    atom = distill(
        "digits", b.ipc, "atom", out=out / "atom", iterations=b.iterations, quiet=quiet, resume="auto"
    )
    say(f"2/3 picking {b.ipc} random real images per class → {out / 'random'}")
    rand = select("digits", b.ipc, "random", seed=0, progress=not quiet)
    rand.save(out / "random")
    say(f"3/3 training {b.repeats} fresh ConvNets for {b.epochs} epochs on each set, tested on the test set")
    cfg = EvalConfig(epochs=b.epochs, repeats=b.repeats)
    results = {
        "random real images": evaluate_set(
            rand, ["convnet"], cfg, out_dir=out / "random", progress=not quiet
        ),
        "ATOM": evaluate_set(atom, ["convnet"], cfg, out_dir=out / "atom", progress=not quiet),
    }
    accs = {name: r["models"]["convnet"]["runs"] for name, r in results.items()}
    # repeat r of both sets starts from the same weights and batches: the difference is the sets'
    diffs = [a - r for a, r in zip(accs["ATOM"], accs["random real images"], strict=True)]
    print(f"\ndigits, {b.describe()}, ConvNet-3")
    rows = [[name, f"{statistics.mean(a):.1f} ± {statistics.pstdev(a):.1f}"] for name, a in accs.items()]
    print(markdown_table(["set", "test accuracy (%)"], rows))
    print(
        f"\nATOM − random: {statistics.mean(diffs):+.1f} points (ahead in {sum(d > 0 for d in diffs)} of "
        f"{len(diffs)} models, each pair trained from the same initial weights)"
    )
    print(f"images: {out / 'atom' / GRID_PNG}, attention maps: {out / 'atom' / ATTENTION_PNG}")
    print(
        f"demo: {time.perf_counter() - t0:.0f} s in all"
        + ("" if b == DEMO_FULL else "; --full for the fuller one")
    )
    return results
