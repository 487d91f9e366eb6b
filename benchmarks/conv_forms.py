"""The ConvNet's three 3×3 convolutions (forward) in three forms, per CPU kind, against the sgemm rate:
oneDNN on NCHW maps (what the engine runs), oneDNN on channels-last maps, and an explicit im2col
(`unfold`) followed by one sgemm, which the issue proposed because it reaches the sgemm rate by
construction in its matmul. Each ISA in its own process (`avx2`: PyTorch's, oneDNN's and MKL's
kernels held to AVX2); each form the fastest of 5 after a warm-up; the matmul rate (2048² sgemm)
measured in the same process. GFLOP/s over the sgemm rate is the share of the machine a form gets.
For the first layer also its forward with the images' gradient, as distillation takes it (the
network frozen): oneDNN's backward, and the matmul and fold the engine runs (`fused._ThinConv`); for
the others their input and weight gradients alone, on NCHW and channels-last maps.

    python benchmarks/conv_forms.py --threads 1 --batch 256
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import ISAS, best_of, child, matmul_gflops

from atomdd.models.fused import _conv

LAYERS = [(3, 32), (128, 16), (128, 8)]  # (input channels, map size) of ConvNet-3 width 128 on 32×32


def _first_layer_backward(x: torch.Tensor, batch: int, hw: int, gflop: float) -> list[dict]:
    """The first layer's forward and input gradient, the network frozen: oneDNN's, and the engine's
    matmul and fold."""
    conv = torch.nn.Conv2d(x.shape[1], 128, 3, padding=1).requires_grad_(False)
    xg, g = x.clone().requires_grad_(True), torch.randn(batch, 128, hw, hw)
    forms = {
        "forward + input gradient, oneDNN": lambda: torch.autograd.grad(conv(xg), xg, g),
        "forward + input gradient, matmul + fold": lambda: torch.autograd.grad(_conv(conv, xg), xg, g),
    }
    rows = []
    for form, fn in forms.items():
        s = best_of(fn, 5)
        rows.append({"c_in": x.shape[1], "hw": hw, "form": form, "ms": 1000 * s, "gflops": 2 * gflop / s})
    return rows


def _backward(x: torch.Tensor, w: torch.Tensor, gflop: float) -> list[dict]:
    """A 128-channel layer's input gradient (what distillation takes through a frozen network) and
    weight gradient (what training adds), oneDNN's backward alone on NCHW and channels-last maps."""
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
        xs = x.contiguous(memory_format=fmt)  # the weights as the engine keeps them
        g = torch.randn_like(F.conv2d(xs, w, padding=1))
        for what, mask in (("input", [True, False, False]), ("weight", [False, True, False])):
            args = (g, xs, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
            s = best_of(lambda args=args: torch.ops.aten.convolution_backward(*args), 5)
            rows.append({"c_in": x.shape[1], "hw": x.shape[-1], "form": f"{what} gradient, oneDNN {layout}",
                         "ms": 1000 * s, "gflops": gflop / s})  # fmt: skip
    return rows


def one(batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    rate = matmul_gflops()
    rows = []
    for cin, hw in LAYERS:
        x, w, b = torch.randn(batch, cin, hw, hw), torch.randn(128, cin, 3, 3), torch.randn(128)
        nhwc = x.contiguous(memory_format=torch.channels_last)

        def im2col(x=x, w=w, b=b, hw=hw):
            cols = F.unfold(x, 3, padding=1)  # N × 9·C_in × H·W
            return (w.view(128, -1) @ cols).view(len(x), 128, hw, hw) + b.view(1, -1, 1, 1)

        forms = {
            "oneDNN NCHW": lambda x=x, w=w, b=b: F.conv2d(x, w, b, padding=1),
            "oneDNN channels-last": lambda x=nhwc, w=w, b=b: F.conv2d(x, w, b, padding=1),
            "im2col + sgemm": im2col,
        }
        gflop = 2 * batch * 128 * cin * 9 * hw * hw / 1e9
        for form, fn in forms.items():
            s = best_of(fn, 5)
            rows.append({"c_in": cin, "hw": hw, "form": form, "ms": 1000 * s, "gflops": gflop / s})
        if cin <= 4:  # the first layer in distillation: the forward and the images' gradient
            rows += _first_layer_backward(x, batch, hw, gflop)
        else:
            rows += _backward(x, w, gflop)
    return {"isa": torch.backends.cpu.get_cpu_capability(), "matmul_gflops": rate, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/conv_forms.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return
    results = {
        isa: child(__file__, {"batch": args.batch, "threads": args.threads}, env=env)
        for isa, env in ISAS.items()
    }
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(
        f"{args.batch} images, {args.threads} thread(s)\n\n"
        "| ISA | layer (C_in, map) | form | ms | GFLOP/s | of sgemm |"
    )
    print("|---|---|---|---|---|---|")
    for isa, r in results.items():
        for row in r["rows"]:
            print(
                f"| {isa} ({r['isa']}, sgemm {r['matmul_gflops']:.0f}) | "
                f"{row['c_in']}, {row['hw']}×{row['hw']} | "
                f"{row['form']} | {row['ms']:.1f} | {row['gflops']:.0f} | "
                f"{100 * row['gflops'] / r['matmul_gflops']:.0f} % |"
            )


if __name__ == "__main__":
    main()
