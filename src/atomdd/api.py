"""`atomdd.distill`: a config from a preset, a config file and settings, then `Distiller.run` with
what a user sees around it: the run's figures (grid.png, attention.png) drawn before run.json says
"done", and TensorBoard's event files where asked for. What the CLI, `atomdd grid` and the demo call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atomdd.data import Dataset
from atomdd.distillation.config import make_config
from atomdd.distillation.driver import Distiller
from atomdd.lock import hold
from atomdd.progress import silenced
from atomdd.sets import SyntheticSet


def draw_figures(folder: Path, data: Dataset) -> None:
    """A finished run's grid.png and attention.png, drawn from its folder (`Distiller.run`'s
    `on_saved`)."""
    from atomdd.report import images

    images.save_run_figures(folder, data)


def distill(
    dataset: str | None = None,
    ipc: int | None = None,
    method: str | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    quiet: bool = False,
    config_file: str | Path | None = None,
    stop: object = None,
    overwrite: bool = False,
    tensorboard: str | Path | None = None,
    **overrides: Any,
) -> SyntheticSet:
    """Distil `dataset` (default digits) to `ipc` (10) images per class with `method` (atom).

    `overrides` are any `DistillConfig` fields (e.g. iterations=1000, lr_img=1.0, p_spatial=2).
    With `out`, writes synthetic.safetensors, run.json, metrics.jsonl, grid.png, attention.png and a
    checkpoint there; `resume=True` continues from that checkpoint (`resume="auto"`: continues if
    there is one, else starts); `overwrite=True` replaces another set or run found there (else
    refused). A truthy `stop` (e.g. the flag of `signals.stop_on_signals()`) ends the run after
    the current step, checkpointed (`Interrupted`). `tensorboard`: a folder for TensorBoard event
    files, the loss and its terms per logged step and the set's grid now and then (needs the
    `tensorboard` extra; checked before the run starts). Its progress shows on stderr (a bar on a
    terminal, a line every 20 s in a log or a notebook) unless `quiet`.
    """
    cfg = make_config(dataset, ipc, method, config_file, **overrides)
    tb = None
    if tensorboard is not None:
        from atomdd.tblog import DistillLog

        tb = DistillLog(tensorboard)
    try:
        # the folder is locked before the data is read: a second writer is refused at once
        with hold(out), silenced(quiet):
            result = Distiller(cfg).run(
                out,
                resume=resume,
                quiet=quiet,
                stop=stop,
                overwrite=overwrite,
                on_log=tb.step if tb is not None else None,
                on_saved=draw_figures,
            )
        if tb is not None:
            tb.image(result.meta["steps"], result)
        return result
    finally:
        if tb is not None:
            tb.close()
