"""The distillation driver: the state of one run (synthetic pixels, optimiser, step), its loop and
checkpoints, over the pure step in `step.py`; every file goes through `folder.RunFolder`.

Under torchrun each rank holds a contiguous share of the classes (`parallel.share`): their real
images and synthetic pixels. Every rank draws the same network from the per-step seed, so no
gradient crosses ranks; one all-reduce per step sums the loss, its terms and the stop flag, so every
rank logs the same loss and stops at the same step; rank 0 gathers the pixels for checkpoints and
the set, and fits the ZCA, which it broadcasts. A checkpoint holds the whole set, so a run resumes
on any number of ranks.

Stopping cleanly on a signal is the entry point's business: pass `stop` (e.g.
`signals.stop_on_signals()`'s flag) and the loop checkpoints and raises `Interrupted` once it is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from atomdd import parallel, peers
from atomdd.data import Dataset, load_dataset
from atomdd.distillation import step as steps
from atomdd.distillation.config import RESUMABLE, DistillConfig, make_config
from atomdd.distillation.folder import CHECKPOINT, RUN_FILE, RunFolder, loss_summary
from atomdd.distillation.shards import Shards, preprocess, zca_refit
from atomdd.errors import AtomddError, Interrupted
from atomdd.hardware import resolve_precision
from atomdd.io import versions
from atomdd.lock import hold
from atomdd.models import FeatureModel
from atomdd.provenance import git_state
from atomdd.sets import SyntheticSet
from atomdd.signals import StopFlag

__all__ = ["CHECKPOINT", "RUN_FILE", "Distiller", "distill"]

log = logging.getLogger(__name__)


class Distiller:
    """Holds the state of one run: data on the device, synthetic pixels, optimiser, step."""

    def __init__(self, cfg: DistillConfig, data: Dataset | None = None) -> None:
        self.cfg = cfg
        self.device = parallel.init(cfg.run.device)  # joins torchrun's group, if it started this
        self.precision = resolve_precision(cfg.run.precision, self.device)
        run = cfg.run
        self.data = data if data is not None else load_dataset(cfg.dataset, run.data_root, run.download)
        self.k = self.data.num_classes
        self.shards = Shards.of(self.k, cfg.ipc)  # this rank's classes (all of them in one process)
        self.prep = preprocess(self.data, cfg.zca, self.device)
        self.task = steps.Task.build(cfg, self.data, self.prep, self.device, self.precision, self.shards.own)
        self.labels = torch.arange(self.k).repeat_interleave(cfg.ipc)
        init, self.refit = self.task.initial_images(), None
        if cfg.zca_refit:  # before a checkpoint's pixels replace them on resume: recorded each time
            init, self.refit = zca_refit(init, self.shards, self.prep.zca.eps)
        self.syn = torch.nn.Parameter(init)
        self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.step = 0
        self.wall_before = 0.0  # seconds the run took before its last checkpoint (kept across resumes)
        self._t0: float | None = None  # when this process's part of the run started
        self.rank_stats: list[dict] | None = None  # each rank's real images, pixels, memory (at the end)

    def network(self, step: int) -> FeatureModel:
        return self.task.network(step)

    def _class_chunks(self) -> list[range]:
        return self.task.class_chunks()

    def loss_and_grad(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradient of one step's loss into the synthetic pixels; return the loss."""
        return steps.loss_and_grad(self.task, self.syn, step)

    # --- checkpoints ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The whole run's state (gathered from every rank; only the main process's is complete)."""
        syn = self.shards.gather(self.syn, "the checkpoint's pixels gather")
        tensors = {
            "syn": (syn if syn is not None else self.syn).detach().cpu(),
            "cpu_rng": torch.get_rng_state(),
        }
        buf = self.opt.state.get(self.syn, {}).get("momentum_buffer")
        if buf is not None:
            whole = self.shards.gather(buf, "the checkpoint's momentum gather")
            tensors["momentum"] = (whole if whole is not None else buf).detach().cpu()
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "step": str(self.step),
            "wall_seconds": repr(self.wall_seconds()),
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
            wall = float(meta.get("wall_seconds", "0"))
            self._check_state(tensors, saved_config, step)
            saved = DistillConfig.from_dict(saved_config).flat()  # also a checkpoint of the flat format
        except (SafetensorError, OSError, KeyError, ValueError, AtomddError) as e:
            raise AtomddError(f"checkpoint {path} is corrupt or not an atomdd checkpoint: {e}") from None
        if step > self.cfg.iterations:
            raise AtomddError(
                f"checkpoint {path} is at step {step}, past iterations={self.cfg.iterations}; resume "
                f"with --iterations {step} or more"
            )
        mine = self.cfg.flat()
        differ = {k: (saved.get(k), v) for k, v in mine.items() if k not in RESUMABLE and saved.get(k) != v}
        if differ:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise AtomddError(f"checkpoint {path} was made with another config ({lines}); use another --out")
        if meta.get("dataset_hash") != self.data.content_hash:
            raise AtomddError(
                f"checkpoint {path} was made on different {self.cfg.dataset} data (hash differs)"
            )
        rows = self.shards.rows()  # this rank's share of the whole set, whatever the ranks were then
        with torch.no_grad():
            self.syn.copy_(tensors["syn"][rows].to(self.device))
        if "momentum" in tensors:
            self.opt.state[self.syn]["momentum_buffer"] = tensors["momentum"][rows].to(self.device)
        torch.set_rng_state(tensors["cpu_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.step = step
        self.wall_before = wall if math.isfinite(wall) and wall >= 0 else 0.0

    def _check_state(self, tensors: dict[str, torch.Tensor], config: Any, step: int) -> None:
        """A checkpoint's state is this run's shape before any of it is used (issue 29: 8)."""
        if not isinstance(config, dict):
            raise ValueError(f"its config is {type(config).__name__}, not a mapping")
        if step < 0:
            raise ValueError(f"its step is {step}")
        pixels, rng = (len(self.labels), *self.syn.shape[1:]), torch.get_rng_state()
        want = {"syn": (pixels, torch.float32), "momentum": (pixels, torch.float32)}
        want["cpu_rng"] = (tuple(rng.shape), rng.dtype)
        for name, (shape, dtype) in want.items():
            t = tensors.get(name)
            if t is None and name == "momentum":  # none before the first step
                continue
            if t is None or tuple(t.shape) != shape or t.dtype != dtype:
                got = f"{t.dtype} {tuple(t.shape)}" if t is not None else "missing"
                raise ValueError(f"its {name} is {got}, this run's is {dtype} {shape}")
        try:
            torch.Generator().set_state(tensors["cpu_rng"])  # torch's own check of the state
        except RuntimeError as e:
            raise ValueError(f"its cpu_rng is no random state: {e}") from None

    def wall_seconds(self) -> float:
        """Seconds of work in this run so far, over every resume."""
        return self.wall_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    # --- the loop -------------------------------------------------------------------------
    def run(
        self,
        out: Path | None = None,
        resume: bool | str = False,
        quiet: bool = True,
        stop: object = None,
        overwrite: bool = False,
        tensorboard: str | Path | None = None,
    ) -> SyntheticSet:
        """Run to `cfg.iterations` steps; with `out`, keep the run folder (resume from it with
        `resume`; "auto": resume where there is a checkpoint, else start). A truthy `stop` (checked
        after every step) checkpoints and raises `Interrupted`. With `out`, an error leaves run.json
        "failed" or "interrupted" and why. A folder holding another set or run is refused unless
        `overwrite` (which removes the old one's files). `tensorboard`: a folder for TensorBoard
        event files (loss, terms, the grid now and then)."""
        self._t0 = None
        tb = None
        if tensorboard is not None:
            from atomdd.tblog import DistillLog

            tb = DistillLog(tensorboard)
        # the folder is this process's for the whole run; a signal only asks for a stop, which the
        # loop turns into a checkpoint (signals.py)
        deferred = stop.deferred() if isinstance(stop, StopFlag) else contextlib.nullcontext()
        try:
            with hold(out), deferred:
                try:
                    return self._run(out, resume, quiet, stop, overwrite, tb)
                except BaseException as e:
                    self._record_failure(out, e)  # while the folder is still this process's
                    raise
        except BaseException as e:
            peers.report_failure(e)  # for the ranks waiting on this one to name it
            raise
        finally:
            if tb is not None:
                tb.close()

    def _record_failure(self, out: Path | None, error: BaseException) -> None:
        if out is None or self._t0 is None:  # stopped before this run wrote its run.json
            return
        status = "interrupted" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "failed"
        try:
            record = self._record(status, time.perf_counter() - self._t0, Path(out))
            RunFolder(out).record(record | {"error": str(error) or type(error).__name__})
        except Exception as e:  # noqa: BLE001  (never hide the error being reported)
            log.warning(
                'could not record the %s run in %s (%s); it may still say "running"',
                status,
                Path(out) / RUN_FILE,
                peers.first_line(e),
            )

    def _run(
        self, out: Path | None, resume: bool | str, quiet: bool, stop: object, overwrite: bool, tb: Any
    ) -> SyntheticSet:
        cfg = self.cfg
        folder = RunFolder(out) if out is not None else None
        if resume == "auto":  # continue a run that has a checkpoint, else start one
            resume = folder is not None and (folder.path / CHECKPOINT).exists()
        if folder is not None:
            if resume:
                self.load_checkpoint(folder.path)
                folder.truncate_metrics(self.step)
            else:
                folder.start(overwrite)
            folder.record(self._record("running", 0.0, folder.path))
        start, t0 = self.step, time.perf_counter()
        self._t0 = t0
        bar = _progress(start, cfg.iterations, quiet or not parallel.is_main_process())
        while self.step < cfg.iterations:
            self.opt.zero_grad(set_to_none=True)
            loss, terms = self.loss_and_grad(self.step)
            value, terms, stopping = self.shards.reduce(loss, terms, stop, self.step)
            if not math.isfinite(value):
                has_checkpoint = folder is not None and (folder.path / CHECKPOINT).exists()
                kept = f"; the last good checkpoint is kept in {out}" if has_checkpoint else ""
                raise AtomddError(
                    f"the loss became {value} at step {self.step}{kept}. Lower lr_img (now {cfg.lr_img}) "
                    "or check the data for NaNs"
                )
            self.opt.step()
            if cfg.clip:
                self.project()
            self.step += 1
            bar.update(1)
            if self.step % cfg.run.log_every == 0 or self.step == cfg.iterations:
                bar.set_postfix(loss=f"{value:.4g}")
                if tb is not None:
                    tb.step(self.step, value, terms, make_set=self.result if self.shards.world == 1 else None)
                if folder is not None:
                    row = {"step": self.step, "loss": value, "seconds": self.wall_seconds()}
                    folder.log(row | {k: float(v) for k, v in terms.items()})
            if folder is not None and (self.step % cfg.run.checkpoint_every == 0 or stopping):
                self.save_checkpoint(folder.path)
            if stopping:
                bar.close()
                raise Interrupted(
                    f"interrupted at step {self.step}; checkpoint saved in {out}; continue with --resume"
                    if out
                    else f"interrupted at step {self.step}",
                    getattr(stop, "signum", 2),  # 2: SIGINT
                )
        bar.close()
        seconds = time.perf_counter() - t0
        result = self.result()
        mine = {
            "real_images": len(self.task.real),
            "pixels": len(self.syn),
            "peak_memory_mb": _peak_memory_mb(self.device),
        }
        self.rank_stats = parallel.gather_objects(mine, "the per-rank statistics gather")
        if tb is not None:
            tb.image(self.step, result)
        if folder is not None:
            self.save_checkpoint(folder.path)
            folder.save_set(result)
            folder.figures(self.data)  # drawn from the folder's run.json ("running") and set
            folder.record(self._record("done", seconds, folder.path, steps_run=self.step - start))  # last
        return result

    @torch.no_grad()
    def project(self) -> None:
        """Keep the synthetic images images: model space → [0, 1] pixels, clamped → model space."""
        self.syn.copy_(self.prep(self.prep.inverse(self.syn.detach().cpu())).to(self.syn.device))

    def result(self) -> SyntheticSet:
        """The whole set, on every rank (gathered from their shares)."""
        meta = {
            "method": self.cfg.method,
            "ipc": self.cfg.ipc,
            "seed": self.cfg.seed,
            "steps": self.step,
            "dataset_hash": self.data.content_hash,
            "config": asdict(self.cfg),
        }
        syn = self.shards.gather(self.syn, "the set's gather", everywhere=True)
        return SyntheticSet.of(syn.cpu().clone(), self.labels.clone(), self.data, self.prep, meta)

    def _record(self, status: str, seconds: float, out: Path, steps_run: int = 0) -> dict[str, Any]:
        return {
            "status": status,
            "config": asdict(self.cfg),
            "resolved": {
                "device": str(self.device),
                "precision": self.precision,
                "batch_real": self.task.batch_real,
                "zca_refit": self.refit,  # the refit of the initial images (None: none)
            },
            "versions": versions(),
            "dataset": self.data.summary(),
            "step": self.step,
            "wall_seconds": self.wall_before + seconds,  # over every resume
            "seconds_this_process": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "loss": loss_summary(out),
            "peak_memory_mb": _peak_memory_mb(self.device),
            "ranks": {
                "world_size": self.shards.world,
                "classes": [[s.start, s.stop] for s in self.shards.shares],  # rank r's classes: [start, stop)
                "held": self.rank_stats,  # per rank, gathered at the end: what it really held
            },
            "command": " ".join(sys.argv),
            "git": git_state(),
        }


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
    resume: bool | str = False,
    quiet: bool = True,
    config_file: str | Path | None = None,
    stop: object = None,
    overwrite: bool = False,
    tensorboard: str | Path | None = None,
    **overrides: Any,
) -> SyntheticSet:
    """Distil `dataset` (default digits) to `ipc` (10) images per class with `method` (atom).

    `overrides` are any `DistillConfig` fields (e.g. iterations=1000, lr_img=1.0, p_spatial=2).
    With `out`, writes synthetic.safetensors, run.json, metrics.jsonl, grid.png, attention.png and a
    checkpoint there; `resume=True` continues from that checkpoint (`resume="auto"`: continues
    if there is one, else starts); `overwrite=True` replaces another
    set or run found there (else refused). A truthy `stop` (e.g. the flag of
    `signals.stop_on_signals()`) ends the run after the current step, checkpointed (`Interrupted`).
    `tensorboard`: a folder for TensorBoard event files (needs the `tensorboard` extra).
    """
    cfg = make_config(dataset, ipc, method, config_file, **overrides)
    with hold(out):  # before the data is read: a second writer is refused at once
        return Distiller(cfg).run(
            out, resume=resume, quiet=quiet, stop=stop, overwrite=overwrite, tensorboard=tensorboard
        )
