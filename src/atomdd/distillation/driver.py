"""The distillation driver: the state of one run (synthetic pixels, optimiser, step), its loop,
checkpoints, log and run folder, over the pure step in `step.py`.

Every file of a run folder is written through `RunFolder`, which writes only in the main process
(`parallel.is_main_process`; a single process is the main one). Stopping cleanly on a signal is
the entry point's business: pass `stop` (e.g. `signals.stop_on_signals()`'s flag) and the loop
checkpoints and raises `Interrupted` once it is set.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from atomdd.data import Dataset, load_dataset
from atomdd.distillation import step as steps
from atomdd.distillation.config import RESUMABLE, DistillConfig, make_config
from atomdd.errors import AtomddError, Interrupted
from atomdd.hardware import resolve_device, resolve_precision
from atomdd.io import append_jsonl, atomic_path, read_jsonl, versions, write_bytes, write_json
from atomdd.models import FeatureModel
from atomdd.parallel import is_main_process
from atomdd.provenance import git_state
from atomdd.sets import SyntheticSet

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
RUN_FILE = "run.json"


class Distiller:
    """Holds the state of one run: data on the device, synthetic pixels, optimiser, step."""

    def __init__(self, cfg: DistillConfig, data: Dataset | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        self.precision = resolve_precision(cfg.run.precision, self.device)
        run = cfg.run
        self.data = data if data is not None else load_dataset(cfg.dataset, run.data_root, run.download)
        self.prep = self.data.preprocess(cfg.zca)
        self.task = steps.Task.build(cfg, self.data, self.prep, self.device, self.precision)
        self.k = self.data.num_classes
        self.labels = torch.arange(self.k).repeat_interleave(cfg.ipc)
        self.syn = torch.nn.Parameter(self.task.initial_images())
        self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.step = 0

    def network(self, step: int) -> FeatureModel:
        return self.task.network(step)

    def _class_chunks(self) -> list[range]:
        return self.task.class_chunks()

    def loss_and_grad(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradient of one step's loss into the synthetic pixels; return the loss."""
        return steps.loss_and_grad(self.task, self.syn, step)

    # --- checkpoints ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"syn": self.syn.detach().cpu().contiguous(), "cpu_rng": torch.get_rng_state()}
        buf = self.opt.state.get(self.syn, {}).get("momentum_buffer")
        if buf is not None:
            tensors["momentum"] = buf.detach().cpu().contiguous()
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": str(self.step),
            "config": json.dumps(asdict(self.cfg)),
            "dataset_hash": self.data.content_hash,
        }
        return tensors, meta

    def save_checkpoint(self, out: Path) -> None:
        RunFolder(out).checkpoint(*self.state())

    def load_checkpoint(self, out: Path) -> None:
        path = out / CHECKPOINT
        if not path.exists():
            raise AtomddError(f"--resume: no checkpoint at {path}; run without --resume to start fresh")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            saved_config = json.loads(meta["config"])
            step = int(meta["step"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise AtomddError(f"checkpoint {path} is corrupt or not an atomdd checkpoint: {e}") from None
        saved = DistillConfig.from_dict(saved_config).flat()  # also a checkpoint of the flat format
        mine = self.cfg.flat()
        differ = {k: (saved.get(k), v) for k, v in mine.items() if k not in RESUMABLE and saved.get(k) != v}
        if differ:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise AtomddError(f"checkpoint {path} was made with another config ({lines}); use another --out")
        if meta.get("dataset_hash") != self.data.content_hash:
            raise AtomddError(
                f"checkpoint {path} was made on different {self.cfg.dataset} data (hash differs)"
            )
        with torch.no_grad():
            self.syn.copy_(tensors["syn"].to(self.device))
        if "momentum" in tensors:
            self.opt.state[self.syn]["momentum_buffer"] = tensors["momentum"].to(self.device)
        torch.set_rng_state(tensors["cpu_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.step = step

    # --- the loop -------------------------------------------------------------------------
    def run(
        self,
        out: Path | None = None,
        resume: bool = False,
        quiet: bool = True,
        stop: object = None,
        tensorboard: str | Path | None = None,
    ) -> SyntheticSet:
        """Run to `cfg.iterations` steps; with `out`, keep the run folder (resume from it with
        `resume`). A truthy `stop` (checked after every step) checkpoints and raises `Interrupted`.
        `tensorboard`: a folder for TensorBoard event files (loss, terms, the grid now and then)."""
        cfg = self.cfg
        tb = None
        if tensorboard is not None:
            from atomdd.tblog import DistillLog

            tb = DistillLog(tensorboard)
        folder = RunFolder(out) if out is not None else None
        if folder is not None:
            if resume:
                self.load_checkpoint(folder.path)
                folder.truncate_metrics(self.step)
            elif (folder.path / CHECKPOINT).exists():
                raise AtomddError(
                    f"{folder.path} already holds a run; pass --resume to continue it, or use another --out"
                )
            else:
                folder.start()
            folder.record(self._record("running", 0.0, folder.path))
        start, t0 = self.step, time.perf_counter()
        bar = _progress(start, cfg.iterations, quiet)
        while self.step < cfg.iterations:
            self.opt.zero_grad(set_to_none=True)
            loss, terms = self.loss_and_grad(self.step)
            value = float(loss)
            if not math.isfinite(value):
                kept = f"; the last good checkpoint is kept in {out}" if out else ""
                raise AtomddError(
                    f"the loss became {value} at step {self.step}{kept}. Lower lr_img (now {cfg.lr_img}) "
                    "or check the data for NaNs"
                )
            self.opt.step()
            self.step += 1
            bar.update(1)
            if self.step % cfg.run.log_every == 0 or self.step == cfg.iterations:
                bar.set_postfix(loss=f"{value:.4g}")
                if tb is not None:
                    tb.step(self.step, value, terms, make_set=self.result)
                if folder is not None:
                    row = {"step": self.step, "loss": value, "seconds": time.perf_counter() - t0}
                    folder.log(row | {k: float(v) for k, v in terms.items()})
            stopping = bool(stop)
            if folder is not None and (self.step % cfg.run.checkpoint_every == 0 or stopping):
                self.save_checkpoint(folder.path)
            if stopping:
                bar.close()
                if tb is not None:
                    tb.close()
                raise Interrupted(
                    f"interrupted at step {self.step}; checkpoint saved in {out}; continue with --resume"
                    if out
                    else f"interrupted at step {self.step}"
                )
        bar.close()
        seconds = time.perf_counter() - t0
        result = self.result()
        if tb is not None:
            tb.image(self.step, result)
            tb.close()
        if folder is not None:
            self.save_checkpoint(folder.path)
            folder.save_set(result)
            folder.record(self._record("done", seconds, folder.path, steps_run=self.step - start))
            folder.figures(self.data)
        return result

    def result(self) -> SyntheticSet:
        meta = {
            "method": self.cfg.method,
            "ipc": self.cfg.ipc,
            "seed": self.cfg.seed,
            "steps": self.step,
            "dataset_hash": self.data.content_hash,
            "config": asdict(self.cfg),
        }
        return SyntheticSet.of(
            self.syn.detach().cpu().clone(), self.labels.clone(), self.data, self.prep, meta
        )

    def _record(self, status: str, seconds: float, out: Path, steps_run: int = 0) -> dict[str, Any]:
        return {
            "status": status,
            "config": asdict(self.cfg),
            "resolved": {
                "device": str(self.device),
                "precision": self.precision,
                "batch_real": self.task.batch_real,
            },
            "versions": versions(),
            "dataset": self.data.summary(),
            "step": self.step,
            "wall_seconds": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "loss": loss_summary(out),
            "peak_memory_mb": _peak_memory_mb(self.device),
            "command": " ".join(sys.argv),
            "git": git_state(),
        }


class RunFolder:
    """The files of one run, each written through here and only by the main process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.main = is_main_process()

    def start(self) -> None:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / METRICS).unlink(missing_ok=True)

    def record(self, run: dict[str, Any]) -> None:
        if self.main:
            write_json(self.path / RUN_FILE, run)

    def log(self, row: dict[str, Any]) -> None:
        if self.main:
            append_jsonl(self.path / METRICS, row)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint, so a resumed run's log reads as one run."""
        path = self.path / METRICS
        if self.main and path.exists():
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if self.main:
            with atomic_path(self.path / CHECKPOINT) as tmp:
                save_file(tensors, str(tmp), metadata=meta)

    def save_set(self, result: SyntheticSet) -> None:
        if self.main:
            result.save(self.path)

    def figures(self, data: Dataset | None = None) -> None:
        """grid.png and attention.png, drawn from the folder's files (run.json, the set)."""
        if self.main:
            from atomdd.report import save_run_figures

            save_run_figures(self.path, data)


def loss_summary(out: Path) -> dict[str, float]:
    rows = read_jsonl(out / METRICS) if (out / METRICS).exists() else []
    if not rows:
        return {}
    losses = [r["loss"] for r in rows]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "logged": len(rows)}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress(start: int, total: int, quiet: bool):
    from tqdm import tqdm

    interval = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s, not every step
    return tqdm(
        initial=start,
        total=total,
        disable=quiet,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=interval,
    )


def distill(
    dataset: str | None = None,
    ipc: int | None = None,
    method: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    config_file: str | Path | None = None,
    stop: object = None,
    tensorboard: str | Path | None = None,
    **overrides: Any,
) -> SyntheticSet:
    """Distil `dataset` (default digits) to `ipc` (10) images per class with `method` (atom).

    `overrides` are any `DistillConfig` fields (e.g. iterations=1000, lr_img=1.0, p_spatial=2).
    With `out`, writes synthetic.safetensors, run.json, metrics.jsonl, grid.png, attention.png and a
    checkpoint there; `resume=True` continues from that checkpoint. A truthy `stop` (e.g. the flag of
    `signals.stop_on_signals()`) ends the run after the current step, checkpointed (`Interrupted`).
    `tensorboard`: a folder for TensorBoard event files (needs the `tensorboard` extra).
    """
    cfg = make_config(dataset, ipc, method, config_file, **overrides)
    return Distiller(cfg).run(out, resume=resume, quiet=quiet, stop=stop, tensorboard=tensorboard)
