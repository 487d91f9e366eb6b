"""How far the golden numbers move when the same arithmetic is done in another order, and when
the computation itself changes a little: the evidence behind `tests/test_golden.py`'s tolerances.

Different CPUs run different kernels: PyTorch picks its vectorised loops by `ATEN_CPU_CAPABILITY`
(AVX-512, AVX2, none), oneDNN its convolutions by `ONEDNN_MAX_CPU_ISA`, MKL its sgemm by
`MKL_ENABLE_INSTRUCTIONS`. Each sums the same products in another order, so float32 results differ
in their last bits, and three distillation steps carry that into the pixels. This script runs the
golden computation under every kernel set this CPU can be limited to, and in the engine's per-class
loop (`fused=False`, which batches the convolutions differently: another order on any CPU), and
compares each with the native fused run. That spread is what a CPU may differ by; the tolerance is
a multiple of it. Beside it, the same computation with one setting moved by one part in a thousand
(image lr, momentum) and with one more step: a change to the engine moves the numbers at least
that far, and the tolerance must stay well below it.

    python benchmarks/golden_spread.py            # writes benchmarks/results/golden_spread.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common

from atomdd.hardware import KERNEL_LIMITS

ISAS = {"native": {}} | KERNEL_LIMITS
VARIANTS = {  # name → overrides of the golden settings; "order" rows only reorder the arithmetic
    "fused": ("order", {}),
    "per-class": ("order", {"fused": False}),
    "lr × 1.001": ("change", {"lr_img": 1.001}),
    "momentum × 1.001": ("change", {"momentum": 0.5005}),
    "one more step": ("change", {"iterations": 4}),
}
QUANTITIES = ("pixel", "sum", "abs_sum")


def child() -> dict:
    """Every variant's golden quantities under this process's kernels."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_golden import distil_quantities

    torch.set_num_threads(1)
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "variants": {}}
    for name, (_, overrides) in VARIANTS.items():
        found = distil_quantities(overrides)
        out["variants"][name] = {m: {k: v for k, v in q.items() if k != "syn"} for m, q in found.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="benchmarks/results/golden_spread.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child()))
        return
    import torch

    runs = {}
    for isa, env in ISAS.items():
        runs[isa] = common.child(__file__, None, env=env)
    ref = runs["native"]["variants"]["fused"]
    rows = []
    for isa, run in runs.items():
        for name, (kind, _) in VARIANTS.items():
            for method, q in run["variants"][name].items():
                r = ref[method]
                rows.append(
                    {
                        "isa": isa,
                        "capability": run["capability"],
                        "variant": name,
                        "kind": kind,
                        "method": method,
                        "pixel": (torch.tensor(q["first_images"]) - torch.tensor(r["first_images"]))
                        .abs()
                        .max()
                        .item(),
                        "sum": abs(q["sum"] - r["sum"]),
                        "abs_sum": abs(q["abs_sum"] - r["abs_sum"]),
                    }
                )
    spread = {k: max(r[k] for r in rows if r["kind"] == "order") for k in QUANTITIES}
    change = {k: min(r[k] for r in rows if r["kind"] == "change") for k in QUANTITIES}
    print(f"{'isa':<7} {'variant':<17} {'method':<5} {'pixel':>9} {'sum':>9} {'abs_sum':>9}")
    for r in rows:
        print(
            f"{r['isa']:<7} {r['variant']:<17} {r['method']:<5} "
            + " ".join(f"{r[k]:9.2e}" for k in QUANTITIES)
        )
    print("largest reordering spread:", " ".join(f"{k} {v:.2e}" for k, v in spread.items()))
    print("smallest change:          ", " ".join(f"{k} {v:.2e}" for k, v in change.items()))
    from atomdd.io import versions, write_json

    write_json(
        args.json,
        {"rows": rows, "spread": spread, "change": change, "versions": versions(), "command": sys.argv},
    )


if __name__ == "__main__":
    main()
