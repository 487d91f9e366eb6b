"""The distillation driver: the state of one run (synthetic pixels, optimiser, steps done), its step
and loop, checkpoints and resume, over the pure step in `step.py`; every file goes through
`folders.run.RunFolder`.

Under torchrun each rank holds a contiguous share of the classes (`parallel.share`): their real
images and synthetic pixels. Every rank draws the same network from the per-step seed, so no
gradient crosses ranks; one all-reduce per step sums the loss, its terms and the stop flag, so every
rank logs the same loss and stops at the same step; rank 0 gathers the pixels for checkpoints and
the set, and fits the ZCA, which it broadcasts. A checkpoint holds the whole set, so a run resumes
on any number of ranks.

What the run shows and draws is the caller's: `on_log` receives the loss every `log_every` steps
(TensorBoard plugs in there), `on_saved` is called once the set is saved and before run.json says
"done" (the figures are drawn there; `atomdd.api.distill` passes both). Stopping cleanly on a signal
is the entry point's business too: pass `stop` (e.g. `signals.stop_on_signals()`'s flag) and the
loop checkpoints and raises `Interrupted` once it is set.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from atomdd import parallel, peers
from atomdd.data import Dataset, load_dataset
from atomdd.distillation import step as steps
from atomdd.distillation.config import RESUMABLE, DistillConfig
from atomdd.distillation.shards import Shards, preprocess, zca_refit
from atomdd.errors import AtomddError, Interrupted
from atomdd.folders.layout import RUN_FILE
from atomdd.folders.run import RunFolder
from atomdd.hardware import resolve_precision
from atomdd.io import versions
from atomdd.lock import hold
from atomdd.models import FeatureModel
from atomdd.progress import Progress, silenced, stage
from atomdd.provenance import git_state
from atomdd.sets import SyntheticSet
from atomdd.signals import StopFlag

__all__ = ["Distiller", "LogHook", "SavedHook"]

# on_log(step, loss, terms, current): every `log_every` steps and at the last, on every rank, with
# the loss and its weighted terms summed over the ranks; `current()` gives the set as it stands
# (None under several ranks, where gathering the set is a collective every rank would have to join)
LogHook = Callable[[int, float, dict[str, float], Callable[[], SyntheticSet] | None], None]
# on_saved(folder, data): on the main process, once the set is saved in the run folder and before
# run.json says "done", so a kill meanwhile leaves the run resumable (the caller's figures)
SavedHook = Callable[[Path, Dataset], None]

log = logging.getLogger(__name__)


class Distiller:
    """Holds the state of one run: data on the device, synthetic pixels, optimiser, steps done."""

    def __init__(self, cfg: DistillConfig, data: Dataset | None = None) -> None:
        self.cfg = cfg
        self.device = parallel.init(cfg.run.device)  # joins torchrun's group, if it started this
        self.precision = resolve_precision(cfg.run.precision, self.device)
        run = cfg.run
        if data is None:
            with stage("distill", f"loading {cfg.dataset}"):
                data = load_dataset(cfg.dataset, run.data_root, run.download)
        self.data = data
        self.k = self.data.num_classes
        self.shards = Shards.of(self.k, cfg.ipc)  # this rank's classes (all of them in one process)
        # the optimiser too: its first one loads torch's compiler modules, seconds on a busy machine
        with stage("distill", "fitting ZCA on the train images" if cfg.zca else "preparing the real images"):
            self.prep = preprocess(self.data, cfg.zca, self.device)
            self.task = steps.Task.build(
                cfg, self.data, self.prep, self.device, self.precision, self.shards.own
            )
            self.labels = torch.arange(self.k).repeat_interleave(cfg.ipc)
            init, self.refit = self.task.initial_images(), None
            if cfg.zca_refit:  # before a checkpoint's pixels replace them on resume: recorded each time
                init, self.refit = zca_refit(init, self.shards, self.prep.zca.eps)
            self.syn = torch.nn.Parameter(init)
            self.opt = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum)
        self.steps_done = 0
        self.folder: RunFolder | None = None  # the run's folder, while `run` keeps one
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
    def state(self) -> dict[str, torch.Tensor]:
        """The whole run's tensors (gathered from every rank; only the main process's are complete)."""
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
        return tensors

    def save_checkpoint(self, out: str | Path) -> None:
        tensors = self.state()
        RunFolder(out).checkpoint(
            tensors, self.steps_done, self.wall_seconds(), asdict(self.cfg), self.data.content_hash
        )

    def load_checkpoint(self, out: str | Path) -> None:
        saved = RunFolder(out).read_checkpoint()
        try:
            self._check_state(saved.tensors, saved.config, saved.step)
            then = DistillConfig.from_dict(saved.config).flat()  # also a checkpoint of the flat format
        except (ValueError, AtomddError) as e:
            raise AtomddError(
                f"checkpoint {saved.path} is corrupt or not an atomdd checkpoint: {e}"
            ) from None
        if saved.step > self.cfg.iterations:
            raise AtomddError(
                f"checkpoint {saved.path} is at step {saved.step}, past iterations={self.cfg.iterations}; "
                f"resume with --iterations {saved.step} or more"
            )
        mine = self.cfg.flat()
        differ = {k: (then.get(k), v) for k, v in mine.items() if k not in RESUMABLE and then.get(k) != v}
        if differ:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise AtomddError(
                f"checkpoint {saved.path} was made with another config ({lines}); use another --out"
            )
        if saved.data_hash != self.data.content_hash:
            raise AtomddError(
                f"checkpoint {saved.path} was made on different {self.cfg.dataset} data (hash differs)"
            )
        tensors = saved.tensors
        rows = self.shards.rows()  # this rank's share of the whole set, whatever the ranks were then
        with torch.no_grad():
            self.syn.copy_(tensors["syn"][rows].to(self.device))
        if "momentum" in tensors:
            self.opt.state[self.syn]["momentum_buffer"] = tensors["momentum"][rows].to(self.device)
        torch.set_rng_state(tensors["cpu_rng"])
        if "cuda_rng" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        self.steps_done = saved.step
        self.wall_before = saved.wall_seconds

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
        cuda = tensors.get("cuda_rng")  # a GPU run's; checked on any device, before it is used there
        if cuda is not None and (cuda.dtype != torch.uint8 or cuda.dim() != 1 or not len(cuda)):
            raise ValueError(f"its cuda_rng is {cuda.dtype} {tuple(cuda.shape)}, not a random state")
        try:
            torch.Generator().set_state(tensors["cpu_rng"])  # torch's own check of the state
        except RuntimeError as e:
            raise ValueError(f"its cpu_rng is no random state: {e}") from None

    def wall_seconds(self) -> float:
        """Seconds of work in this run so far, over every resume."""
        return self.wall_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    # --- the step and the loop ----------------------------------------------------------------
    def step(self, stop: object = None) -> tuple[float, dict[str, Any], bool]:
        """Take the run's next step, exactly as `run` takes it: the gradient of the step's loss
        into the pixels, the loss and its terms summed over the ranks (one all-reduce, which also
        asks every rank whether `stop` is set), a non-finite loss refused, the optimiser's step,
        the pixels projected back onto images (`clip`), one more step done. Returns the loss, its
        terms (tensors in one process, floats under several) and whether a rank is stopping."""
        self.opt.zero_grad(set_to_none=True)
        loss, terms = self.loss_and_grad(self.steps_done)
        value, terms, stopping = self.shards.reduce(loss, terms, stop, self.steps_done)
        if not math.isfinite(value):
            kept = ""
            if self.folder is not None and self.folder.has_checkpoint():
                kept = f"; the last good checkpoint is kept in {self.folder.path}"
            raise AtomddError(
                f"the loss became {value} at step {self.steps_done}{kept}. Lower lr_img (now "
                f"{self.cfg.lr_img}) or check the data for NaNs"
            )
        self.opt.step()
        if self.cfg.clip:
            self.project()
        self.steps_done += 1
        return value, terms, stopping

    def run(
        self,
        out: str | Path | None = None,
        resume: bool | str = False,
        quiet: bool = False,
        stop: object = None,
        overwrite: bool = False,
        on_log: LogHook | None = None,
        on_saved: SavedHook | None = None,
    ) -> SyntheticSet:
        """Run to `cfg.iterations` steps; with `out`, keep the run folder (resume from it with
        `resume`; "auto": resume where there is a checkpoint, else start). A truthy `stop` (checked
        after every step) checkpoints and raises `Interrupted`. With `out`, an error leaves run.json
        "failed" or "interrupted" and why. A folder holding another set or run is refused unless
        `overwrite` (which removes the old one's files). `on_log` and `on_saved`: the hooks of the
        module's docstring. Its progress shows (`progress.Progress`) unless `quiet`."""
        self._t0 = None
        self.folder = RunFolder(out) if out is not None else None
        # the folder is this process's for the whole run; a signal only asks for a stop, which the
        # loop turns into a checkpoint (signals.py)
        deferred = stop.deferred() if isinstance(stop, StopFlag) else contextlib.nullcontext()
        try:
            with hold(out), deferred, silenced(quiet):
                try:
                    return self._run(resume, quiet, stop, overwrite, on_log, on_saved)
                except BaseException as e:
                    self._record_failure(e)  # while the folder is still this process's
                    raise
        except BaseException as e:
            peers.report_failure(e)  # for the ranks waiting on this one to name it
            raise

    def _record_failure(self, error: BaseException) -> None:
        if self.folder is None or self._t0 is None:  # stopped before this run wrote its run.json
            return
        status = "interrupted" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "failed"
        try:
            record = self._record(status, time.perf_counter() - self._t0)
            self.folder.record(record | {"error": str(error) or type(error).__name__})
        except Exception as e:  # noqa: BLE001  (never hide the error being reported)
            log.warning(
                'could not record the %s run in %s (%s); it may still say "running"',
                status,
                self.folder.path / RUN_FILE,
                peers.first_line(e),
            )

    def _run(
        self,
        resume: bool | str,
        quiet: bool,
        stop: object,
        overwrite: bool,
        on_log: LogHook | None,
        on_saved: SavedHook | None,
    ) -> SyntheticSet:
        cfg, folder = self.cfg, self.folder
        if resume == "auto":  # continue a run that has a checkpoint, else start one
            resume = folder is not None and folder.has_checkpoint()
        kept = False  # a finished run resumed at its own length: its record stays as it is
        if folder is not None:
            if resume:
                self.load_checkpoint(folder.path)
                folder.truncate_metrics(self.steps_done)
                kept = self.steps_done == cfg.iterations and folder.done_at(self.steps_done)
            else:
                folder.start(overwrite)
            if not kept:
                folder.record(self._record("running", 0.0))
        start, t0 = self.steps_done, time.perf_counter()
        self._t0 = t0
        loss = ""
        with Progress("distill", cfg.iterations, unit="step", done=start) as bar:
            while self.steps_done < cfg.iterations:
                value, terms, stopping = self.step(stop)
                n = self.steps_done
                if n % cfg.run.log_every == 0 or n == cfg.iterations:
                    terms = {k: float(v) for k, v in terms.items()}
                    loss = f", loss {value:.4g}"
                    if on_log is not None:
                        on_log(n, value, terms, self.result if self.shards.world == 1 else None)
                    if folder is not None:
                        folder.log({"step": n, "loss": value, "seconds": self.wall_seconds()} | terms)
                bar.advance(1, f"step {n}/{cfg.iterations}{loss}")
                if folder is not None and (n % cfg.run.checkpoint_every == 0 or stopping):
                    self.save_checkpoint(folder.path)
                if stopping:
                    raise Interrupted(
                        f"interrupted at step {n}; checkpoint saved in {folder.path}; continue with --resume"
                        if folder is not None
                        else f"interrupted at step {n}",
                        getattr(stop, "signum", 2),  # 2: SIGINT
                    )
            bar.close(f"{cfg.iterations} steps{loss}, {time.perf_counter() - t0:.0f} s")
        seconds = time.perf_counter() - t0
        result = self.result()
        mine = {
            "real_images": len(self.task.real),
            "pixels": len(self.syn),
            "peak_memory_mb": _peak_memory_mb(self.device),
        }
        self.rank_stats = parallel.gather_objects(mine, "the per-rank statistics gather")
        if folder is not None:
            with stage(
                "distill", f"saving the set in {folder.path}" + (" and drawing it" if on_saved else "")
            ):
                if not kept:
                    self.save_checkpoint(folder.path)
                folder.save_set(result)
                if on_saved is not None and folder.main:
                    on_saved(folder.path, self.data)  # drawn from the folder's run.json and set
            if not kept:
                folder.record(self._record("done", seconds, steps_run=self.steps_done - start))  # last
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
            "steps": self.steps_done,
            "dataset_hash": self.data.content_hash,
            "config": asdict(self.cfg),
        }
        syn = self.shards.gather(self.syn, "the set's gather", everywhere=True)
        return SyntheticSet.of(
            syn.cpu().clone(), self.labels.clone(), self.data, self.prep, meta, factor=self.cfg.factor
        )

    def _pool_record(self) -> dict[str, Any] | None:
        """The pool the steps matched through: its folder and identity (None: random networks)."""
        pool = self.task.pool
        if pool is None:
            return None
        members = [round(d["accuracy"], 2) for d in pool.record["done"]]
        return {"folder": str(pool.folder), "weights_sha256": pool.digest, "accuracy": members}

    def _record(self, status: str, seconds: float, steps_run: int = 0) -> dict[str, Any]:
        return {
            "status": status,
            "config": asdict(self.cfg),
            "resolved": {
                "device": str(self.device),
                "precision": self.precision,
                "batch_real": self.task.batch_real,
                "zca_refit": self.refit,  # the refit of the initial images (None: none)
                "pool": self._pool_record(),
            },
            "versions": versions(),
            "dataset": self.data.summary(),
            "step": self.steps_done,
            "wall_seconds": self.wall_before + seconds,  # over every resume
            "seconds_this_process": seconds,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "loss": self.folder.loss_summary() if self.folder is not None else {},
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
