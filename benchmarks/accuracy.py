"""Accuracy of every method under one budget: coresets and distillation, through the same protocol.

For each IPC, method and distillation seed: make the set (coreset selection, or distillation with
`--steps` steps), then train `--runs` fresh ConvNets on it for `--epochs` epochs and test them on the
real test set. Every set and its eval.json live under --out, and a finished one is reused, so an
interrupted benchmark continues where it stopped (distillation resumes from its checkpoint).

A method is a registry name with optional overrides, for ablations: `atom[p_spatial=2,p_channel=6]`.

    # the budget the official code was re-run with (../shared/reference-numbers.md)
    python benchmarks/accuracy.py --data-root ../shared/data --steps 200 --epochs 300 --runs 3
    # longer: judge methods apart
    python benchmarks/accuracy.py --data-root ../shared/data --steps 1000 --epochs 300 --runs 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

CORESETS = ("random", "herding", "kcenter")


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if not m:
        raise SystemExit(f"bad method spec {spec!r}; e.g. atom or atom[p_spatial=2,p_channel=6]")
    overrides = dict(kv.split("=", 1) for kv in m.group(2).split(",")) if m.group(2) else {}
    return m.group(1), overrides


def slug(spec: str) -> str:
    return re.sub(r"[^\w.-]+", "_", spec).strip("_")


def make_set(spec: str, ipc: int, seed: int, args: argparse.Namespace, folder: Path, stop: object = None):
    from atomdd.coreset import select
    from atomdd.distillation.config import make_config, preset
    from atomdd.distillation.driver import CHECKPOINT, distill
    from atomdd.sets import FILENAME, load_synthetic

    name, overrides = parse_method(spec)
    if name in CORESETS:
        if (folder / FILENAME).exists():
            return load_synthetic(folder)
        # coresets are stored in the space the distilled sets of the same dataset use (ZCA for CIFAR)
        zca = preset(args.dataset, ipc, "atom")["zca"]
        syn = select(args.dataset, ipc, name, seed=seed, data_root=args.data_root, zca=zca, **overrides)
        syn.save(folder)
        return syn
    if (folder / "run.json").exists():
        # a folder is named by its spec, and a preset's defaults can change: never reuse a set made
        # with other matching settings than the spec means now
        made = json.loads((folder / "run.json").read_text())
        want = make_config(args.dataset, ipc, name, iterations=args.steps, seed=seed, **overrides)
        differ = {
            k: (made["config"].get(k), v)
            for k, v in want.match().to_dict().items()
            if made["config"].get(k) != v
        }
        if differ:
            raise SystemExit(
                f"{folder} was made with other settings than {spec!r} means now (made, now): {differ}; "
                "move it aside, or spell the settings out in the spec"
            )
        if made.get("status") == "done":
            return load_synthetic(folder)
    return distill(
        args.dataset,
        ipc,
        name,
        out=folder,
        resume=(folder / CHECKPOINT).exists(),
        quiet=not args.progress,
        stop=stop,
        iterations=args.steps,
        seed=seed,
        data_root=args.data_root,
        **overrides,
    )


def finished(folder: Path, args: argparse.Namespace) -> dict | None:
    """The eval report of a finished set evaluated under this budget, else None."""
    from atomdd.evaluate import RESULT_FILE

    eval_file = folder / RESULT_FILE
    if not eval_file.exists():
        return None
    report = json.loads(eval_file.read_text())
    config = report["config"]
    if config["epochs"] != args.epochs or len(report["models"]["convnet"]["runs"]) != args.runs:
        return None
    if config.get("test_limit", 0) != args.test_limit:
        return None
    return report


def collect(out: Path, args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """Every finished set under `out`, by method and IPC: runs and seeds add up across invocations."""
    found: dict[str, dict[int, list[dict]]] = {}
    for folder in sorted(out.glob("ipc*/*-seed*")):
        label, _, seed = folder.name.rpartition("-seed")
        ipc = folder.parent.name.removeprefix("ipc")
        report = finished(folder, args)
        if report is None or not seed.isdigit() or not ipc.isdigit():
            continue
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        found.setdefault(label, {}).setdefault(int(ipc), []).append(
            {
                "seed": int(seed),
                "runs": report["models"]["convnet"]["runs"],
                "first": report["models"]["convnet"].get("first", {}).get("runs"),
                "make_seconds": run.get("wall_seconds"),
                "eval_seconds": report["seconds"],
            }
        )
    order = [slug(m) for m in args.methods]
    results: dict[str, dict[int, dict]] = {}
    for folder_label in sorted(found, key=lambda x: (order.index(x) if x in order else len(order), x)):
        # listed methods are shown as spelled on the command line, the others by their folder name
        label = args.methods[order.index(folder_label)] if folder_label in order else folder_label
        for ipc, per_seed in sorted(found[folder_label].items()):
            all_runs = [a for s in per_seed for a in s["runs"]]
            seed_means = [statistics.mean(s["runs"]) for s in per_seed]
            first = [a for s in per_seed for a in s["first"] or []]
            results.setdefault(label, {})[ipc] = {
                "first_mean": statistics.mean(first) if first else None,
                "first_std": statistics.stdev(first) if len(first) > 1 else 0.0,
                "mean": statistics.mean(all_runs),
                "std": statistics.stdev(all_runs) if len(all_runs) > 1 else 0.0,
                "seeds": [s["seed"] for s in per_seed],
                "seed_means": seed_means,
                "seed_std": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
                "per_seed": per_seed,
            }
    if args.against in results:
        for label, by_ipc in results.items():
            for ipc, r in by_ipc.items():
                if label != args.against and ipc in results[args.against]:
                    r["paired"] = paired(r, results[args.against][ipc], args.against)
    return results


def paired(result: dict, ref: dict, ref_label: str) -> dict | None:
    """Difference to `ref`, run by run: evaluation run r of every set starts from the same weights and
    augmentation draws (its seeds depend only on r), so pairing by (seed, run) removes the spread that
    comes from the evaluation model, which hides differences smaller than a point."""
    ref_runs = {s["seed"]: s["runs"] for s in ref["per_seed"]}
    by_seed = [
        [a - b for a, b in zip(s["runs"], ref_runs[s["seed"]], strict=True)]
        for s in result["per_seed"]
        if s["seed"] in ref_runs
    ]
    diffs = [d for one_seed in by_seed for d in one_seed]
    if not diffs:
        return None
    # a seed's mean difference compares the two distilled sets themselves: its spread is the one that
    # says whether one method makes better sets, not just better luck with one evaluation model
    seed_diffs = [statistics.mean(d) for d in by_seed]
    return {
        "against": ref_label,
        "mean": statistics.mean(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "wins": sum(d > 0 for d in diffs),
        "n": len(diffs),
        "seed_std": statistics.stdev(seed_diffs) if len(seed_diffs) > 1 else 0.0,
        "seed_wins": sum(d > 0 for d in seed_diffs),
        "seeds": len(seed_diffs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--methods", nargs="+", default=["random", "herding", "kcenter", "dm", "datadam", "atom"])
    ap.add_argument("--steps", type=int, default=200, help="distillation steps")
    ap.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    ap.add_argument("--runs", type=int, default=3, help="evaluation models per set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="distillation / selection seeds")
    ap.add_argument(
        "--out", default=None, help="default: benchmarks/results/accuracy-<dataset>-s<steps>-e<epochs>"
    )
    ap.add_argument("--report", action="store_true", help="only tabulate the finished sets under --out")
    ap.add_argument("--against", default="atom", help="method the paired differences (Δ) are taken against")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--test-limit",
        type=int,
        default=0,
        metavar="N",
        help="also report accuracy on the first N test images (CIFAR-10 here: 1000, its exact part)",
    )
    args = ap.parse_args()
    from atomdd.errors import AtomddError
    from atomdd.evaluate import EvalConfig, evaluate_set
    from atomdd.hardware import tune_cpu_allocator
    from atomdd.io import versions, write_json
    from atomdd.signals import stop_on_signals

    tune_cpu_allocator()
    out = Path(args.out or f"benchmarks/results/accuracy-{args.dataset}-s{args.steps}-e{args.epochs}")
    cfg = EvalConfig(epochs=args.epochs, runs=args.runs, test_limit=args.test_limit)
    t0 = time.perf_counter()
    for ipc in [] if args.report else args.ipc:
        for spec in args.methods:
            for seed in args.seeds:
                folder = out / f"ipc{ipc}" / f"{slug(spec)}-seed{seed}"
                t = time.perf_counter()
                try:
                    with stop_on_signals() as stop:
                        syn = make_set(spec, ipc, seed, args, folder, stop)
                except AtomddError as e:  # e.g. interrupted: the checkpoint is kept, a rerun resumes
                    raise SystemExit(str(e)) from None
                made = time.perf_counter() - t
                report = finished(folder, args)
                if report is None:
                    report = evaluate_set(syn, ["convnet"], cfg, data_root=args.data_root, out_dir=folder)
                accs = report["models"]["convnet"]["runs"]
                print(
                    f"ipc {ipc:>2} {spec:<40} seed {seed}: {statistics.mean(accs):6.2f} "
                    f"(make {made:.0f}s, eval {report['seconds']:.0f}s)",
                    flush=True,
                )
    results = collect(out, args)
    budget = {"steps": args.steps, "epochs": args.epochs, "runs": args.runs, "test_limit": args.test_limit}
    write_json(
        out / "accuracy.json",
        {
            "dataset": args.dataset,
            "budget": budget,
            "results": results,
            "seconds": time.perf_counter() - t0,
            "versions": versions(),
            "command": " ".join(sys.argv),
        },
    )
    print(
        f"\n{args.dataset}, {args.steps} distillation steps, {args.epochs} epochs × {args.runs} models: "
        "test accuracy % (mean ± std over all models of all seeds; n = seeds)"
    )
    ipcs = sorted({i for by_ipc in results.values() for i in by_ipc})
    print(
        f"Δ: paired difference to {args.against} over the (seed, run) pairs both have: mean ± std over runs "
        "/ ± std of the per-seed mean differences, and how many runs / seeds are ahead"
    )
    lim = args.test_limit
    head = [f"IPC {i} | Δ IPC {i}" + (f" | IPC {i}, first {lim}" if lim else "") for i in ipcs]
    print("| method | " + " | ".join(head) + " |")
    print("|---|" + ("---|---|---|" if lim else "---|---|") * len(ipcs))
    for spec, by_ipc in results.items():
        cells = []
        for i in ipcs:
            r = by_ipc.get(i)
            d = r and r.get("paired")
            cells.append(f"{r['mean']:.1f} ± {r['std']:.1f} (n={len(r['seeds'])})" if r else "–")
            cells.append(
                f"{d['mean']:+.2f} ± {d['std']:.2f} / ± {d['seed_std']:.2f} "
                f"({d['wins']}/{d['n']} runs, {d['seed_wins']}/{d['seeds']} seeds)"
                if d
                else "–"
            )
            if lim:
                has = r and r["first_mean"] is not None
                cells.append(f"{r['first_mean']:.1f} ± {r['first_std']:.1f}" if has else "–")
        print(f"| {spec} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
