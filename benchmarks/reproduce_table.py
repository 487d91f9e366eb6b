"""The figures of docs/reproduce.md, read from the published-protocol runs (`benchmarks/reproduce.sh`
lays them out as a grid: ipc<IPC>/<set>-seed<S>/): each set under each of its evaluations
(`eval.json`, its code's evaluation; `eval-instance-norm/eval.json`, the same protocol with the
instance-norm ConvNet), mean ± std over the evaluation models on the whole test set and on the exact
first 1 000 test images, and its paired difference to `--against` under the same evaluation, model
by model (model r of every set starts from the same weights and draws the same augmentations).

    python benchmarks/reproduce_table.py --against datadam-code_iterations_8000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atomdd.folders.layout import EVAL_FILE, GRID_MEMBERS
from atomdd.report.tables import markdown_table, paired, summary


def _protocol(key: str, model: str) -> str:
    """An evaluation's protocol (eval.json's key for it) in words: the model, epochs, batch, models."""
    p = dict(part.split("=", 1) for part in key.split(","))
    return f"{model}, {p['epochs']} epochs, batch {p['batch_size']}, {p['runs']} models"


def results(root: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """(IPC folder, evaluation protocol) → set → its eval.json figures (mean ± std over the models as
    the published code states them, np.std) with `summary`'s fields for `paired`, from every
    evaluation a set's folder holds (eval.json keeps each protocol it was evaluated under)."""
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for run in sorted(root.glob(GRID_MEMBERS)):
        name = run.name.rsplit("-seed", 1)[0]
        for file in [*run.glob(EVAL_FILE), *sorted(run.glob(f"eval-*/{EVAL_FILE}"))]:
            for key, models in json.loads(file.read_text()).get("results", {}).items():
                for model, m in models.items():
                    one = {"seed": 0, "runs": m["runs"], "first": m.get("first", {}).get("runs")}
                    found.setdefault((run.parent.name, _protocol(key, model)), {})[name] = summary([one]) | m
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("benchmarks/results/cifar10-reproduce"))
    ap.add_argument("--against", default="datadam-code_iterations_8000", help="the set differences are to")
    args = ap.parse_args()
    rows = []
    for (ipc, label), sets in results(args.root).items():
        ref = sets.get(args.against)
        for name, s in sets.items():
            d = paired(s, ref, args.against) if ref and name != args.against else None
            diff = f"{d['mean']:+.2f} ± {d['std']:.2f}, {d['wins']} of {d['n']} ahead" if d else "–"
            first = f"{s['first']['mean']:.1f} ± {s['first']['std']:.1f}" if "first" in s else "–"
            rows.append([ipc, f"`{name}`", label, f"{s['mean']:.1f} ± {s['std']:.1f}", first, diff])
    header = ["IPC", "set", "evaluation", "whole test set", "first 1 000", f"paired Δ to `{args.against}`"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
