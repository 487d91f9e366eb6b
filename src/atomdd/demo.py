"""`atomdd demo`: ATOM on the embedded digits data, then the standard evaluation beside a random
subset of the same size — the whole pipeline in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from atomdd.api import distill
from atomdd.coreset import select
from atomdd.evaluate import evaluate_set
from atomdd.folders.layout import ATTENTION_PNG, GRID_PNG
from atomdd.report.tables import markdown_table
from atomdd.settings import EvalConfig


def run_demo(
    out: str | Path = "atomdd-demo",
    iterations: int = 200,
    ipc: int = 10,
    repeats: int = 5,
    epochs: int = 300,
    quiet: bool = False,
) -> dict[str, dict]:
    out = Path(out)
    say = (lambda *a: None) if quiet else print
    say(f"1/3 distilling digits to {ipc} images per class with ATOM ({iterations} steps) → {out / 'atom'}")
    atom = distill(
        "digits",
        ipc,
        "atom",
        out=out / "atom",
        iterations=iterations,
        quiet=quiet,
        resume="auto",
    )
    say(f"2/3 picking {ipc} random real images per class → {out / 'random'}")
    rand = select("digits", ipc, "random", seed=0)
    rand.save(out / "random")
    say(
        f"3/3 training {repeats} fresh ConvNets for {epochs} epochs on each set, testing on the real test set"
    )
    cfg = EvalConfig(epochs=epochs, repeats=repeats)
    results = {
        "random real images": evaluate_set(
            rand, ["convnet"], cfg, out_dir=out / "random", progress=not quiet
        ),
        "ATOM": evaluate_set(atom, ["convnet"], cfg, out_dir=out / "atom", progress=not quiet),
    }
    print(f"\ndigits, {ipc} images per class, ConvNet-3, {repeats} models × {epochs} epochs")
    rows = [
        [name, f"{r['models']['convnet']['mean']:.1f} ± {r['models']['convnet']['std']:.1f}"]
        for name, r in results.items()
    ]
    print(markdown_table(["set", "test accuracy (%)"], rows))
    print(f"\nimages: {out / 'atom' / GRID_PNG}, attention maps: {out / 'atom' / ATTENTION_PNG}")
    return results
