"""What a distillation rank holds in memory, with 1 and 2 ranks (gloo, CPU): a Tiny ImageNet-format
tree of random JPEGs (`--classes` × `--per-class` train images, 64×64), ATOM's preset at `--ipc`,
measured once the run is built (before its first step, whose activations would hide the rest) and
after one step. Per rank: its real images (its own classes, float32, in model space), its private
memory (RssAnon: what no other process shares) and the file pages it maps (RssFile: the decoded
cache, held once per machine in the page cache, however many ranks map it).

    python benchmarks/rank_memory.py --classes 20 --per-class 500
    python benchmarks/rank_memory.py --trees before=../old/src after=src   # side by side, interleaved
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import launch


def write_tree(root: Path, classes: int, per_class: int, val_per_class: int) -> None:
    """The official layout (wnids.txt, train/<wnid>/images/, val/images/ + val_annotations.txt)."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    if (folder / "wnids.txt").exists():
        return
    rng = np.random.default_rng(0)
    wnids = [f"n{c:08d}" for c in range(classes)]

    def save(file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(file, "JPEG", quality=90)

    for wnid in wnids:
        for j in range(per_class):
            save(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
    notes = []
    for i in range(classes * val_per_class):
        save(folder / "val" / "images" / f"val_{i}.JPEG")
        notes.append(f"val_{i}.JPEG\t{wnids[i % classes]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")  # last: marks the tree complete


def status_mb() -> dict[str, float]:
    """This process's resident memory by kind, from /proc/self/status (Linux), in MiB."""
    keys = ("VmHWM", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: int(line.split()[1]) / 1024 for line in lines for k in keys if line.startswith(k + ":")}


def rank_main(job: dict) -> None:
    from atomdd import parallel
    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller
    from atomdd.hardware import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    cfg = make_config("tinyimagenet", job["ipc"], "atom", data_root=job["root"], device="cpu")
    d = Distiller(cfg)
    built = status_mb()
    d.step()  # the step a run takes, its per-step all-reduce included
    mine = {"classes": [d.shards.own.start, d.shards.own.stop], "real_mb": d.task.real.nbytes / 2**20}
    mine |= {"dataset_uint8_mb": d.data.train_images.nbytes / 2**20, "built": built} | status_mb()
    ranks = parallel.gather_objects(mine, "the report gather")
    if parallel.is_main_process():
        print(json.dumps({"ranks": ranks}))
    parallel.leave()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--root", help="where the tree is written (kept; default: a temporary folder)")
    ap.add_argument("--trees", nargs="+", default=[], metavar="NAME=SRC", help="source trees to interleave")
    ap.add_argument("--json", default="benchmarks/results/rank_memory.json")
    ap.add_argument("--rank-job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_job:
        rank_main(json.loads(args.rank_job))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="atomdd-tiny-"))
    t0 = time.perf_counter()
    write_tree(root, args.classes, args.per_class, args.val_per_class)
    from atomdd.data import load_dataset

    load_dataset("tinyimagenet", root)  # decodes once and writes the cache the ranks read
    print(f"tree and cache in {root} ({time.perf_counter() - t0:.0f} s)")
    trees = [t.split("=", 1) for t in args.trees] or [["this", None]]
    job = {"root": str(root), "ipc": args.ipc}
    rows = []
    print("MiB; RssAnon and RssFile when the run is built, before its first step; peak RSS after one step")
    print("| tree | ranks | rank | classes | real images | RssAnon | RssFile | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for world in (1, 2):
        for name, tree in trees:
            for r, got in enumerate(launch(world, job, __file__, tree)["ranks"]):
                rows.append({"tree": name, "world": world, "rank": r} | got)
                print(
                    f"| {name} | {world} | {r} | {got['classes']} | {got['real_mb']:.0f} | "
                    f"{got['built']['RssAnon']:.0f} | {got['built']['RssFile']:.0f} | {got['VmHWM']:.0f} |",
                    flush=True,
                )
    meta = {"args": {k: v for k, v in vars(args).items() if k != "rank_job"}, "torch": torch.__version__}
    meta |= {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
