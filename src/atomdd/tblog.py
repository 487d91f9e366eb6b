"""Optional TensorBoard logging (`--tensorboard DIR`): event files written locally, nothing sent
anywhere. Off by default; needs the `tensorboard` package (`pip install -e '.[tensorboard]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atomdd.errors import AtomddError
from atomdd.parallel import is_main_process

INSTALL = "pip install -e '.[tensorboard]' (or pip install tensorboard)"


def require() -> Any:
    """The `SummaryWriter` class, or a clear error naming the extra to install (check it before a
    long run, not after)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AtomddError(
            f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}"
        ) from None
    return SummaryWriter


def writer(logdir: str | Path) -> Any:
    """A `SummaryWriter` on `logdir` (None in every process but the main one)."""
    summary_writer = require()
    return summary_writer(log_dir=str(logdir)) if is_main_process() else None


class DistillLog:
    """The loss and each weighted term per logged step; the synthetic grid every `image_every` logs."""

    def __init__(self, logdir: str | Path, image_every: int = 10) -> None:
        self.w = writer(logdir)
        self.image_every = image_every
        self.logs = 0

    def step(self, step: int, loss: float, terms: dict[str, Any], make_set: Any = None) -> None:
        """`make_set()`: the set now, called only when a grid is due."""
        if self.w is None:
            return
        self.w.add_scalar("distill/loss", loss, step)
        for name, value in terms.items():
            self.w.add_scalar(f"distill/{name}", float(value), step)
        if make_set is not None and self.logs % self.image_every == 0:
            self.image(step, make_set())
        self.logs += 1

    def image(self, step: int, syn: Any) -> None:
        """The set's grid (class names on the rows) as `atomdd show` draws it."""
        import numpy as np

        from atomdd.report.images import display_images, grid_image

        if self.w is None:
            return
        images, labels, _ = display_images(syn)
        img = grid_image(images, labels, class_names=syn.classes)
        self.w.add_image("distill/synthetic", np.asarray(img), step, dataformats="HWC")

    def close(self) -> None:
        if self.w is not None:
            self.w.close()


class EvalLog:
    """Per model: each epoch's mean training loss of the repeats trained together (`on_epoch` of
    `evaluate_set` / `evaluate_whole`), then each repeat's final test accuracy and their mean."""

    def __init__(self, logdir: str | Path) -> None:
        self.w = writer(logdir)

    def epoch(self, model: str, repeats: list[int], epoch: int, loss: float) -> None:
        if self.w is not None:
            which = f"repeat{repeats[0]}" if len(repeats) == 1 else f"repeats{repeats[0]}-{repeats[-1]}"
            self.w.add_scalar(f"eval/{model}/train_loss/{which}", loss, epoch)

    def final(self, result: dict) -> None:
        """The accuracies of an evaluation (eval.json's), then the event file is closed."""
        if self.w is None:
            return
        for model, r in result["models"].items():
            for i, acc in enumerate(r["runs"]):
                self.w.add_scalar(f"eval/{model}/accuracy", acc, i)
            self.w.add_scalar(f"eval/{model}/mean_accuracy", r["mean"], 0)
            self.w.add_scalar(f"eval/{model}/std_accuracy", r["std"], 0)
        self.w.add_text("eval/config", str(result["config"]), 0)
        self.w.close()
