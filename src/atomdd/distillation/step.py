"""One distillation step, pure: synthetic pixels matched to real data through a random, frozen network.

A step draws a fresh network, a real batch per class and one augmentation per class from seeds
derived from (seed, step) alone, so its result does not depend on what ran before it: resuming
from a checkpoint, or sharding classes over processes, reproduces the same run. A `Task` holds the
real images of its own range of classes (a torchrun rank's share, `parallel.share`; all classes in
one process), and `loss_and_grad` works on any range within it; the classes of a range
go through one forward pass (instance norm keeps samples independent), in chunks only to bound
memory, and the real branch runs without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atomdd.augment import DSAConfig, draw
from atomdd.data import Dataset
from atomdd.data.transforms import Preprocess
from atomdd.distillation.config import DistillConfig, step_seed
from atomdd.errors import AtomddError
from atomdd.matching import class_statistics, matching_loss
from atomdd.models import FeatureModel, seeded_model
from atomdd.parallel import chunks
from atomdd.settings import MatchConfig


def generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """The CPU generator of one purpose ("net", "real", "aug", "init") at one step."""
    return torch.Generator().manual_seed(step_seed(seed, step, purpose))


def network(
    cfg: DistillConfig, channels: int, num_classes: int, image_size: tuple[int, int], step: int, device
) -> FeatureModel:
    """A freshly initialised, frozen network, the same for a given (seed, step) on any device."""
    seed = step_seed(cfg.seed, step, "net")
    name = cfg.model_ref().name
    net = seeded_model(seed, name, channels, num_classes, image_size, **cfg.model_options())
    net.requires_grad_(False)
    return net.to(device).train()


@dataclass(frozen=True)
class Task:
    """What every step of a run reads and none changes: the settings, the real images of the
    classes `own` on the device (`real_images` gives them in model space), and each class's train
    indices into them (other classes' entries are only counted: every rank draws every class's
    batch, to keep one stream)."""

    cfg: DistillConfig
    match: MatchConfig
    dsa: DSAConfig
    real: torch.Tensor  # uint8 as read without ZCA (normalised per batch), else model space
    prep: Preprocess
    class_idx: list[torch.Tensor]
    channels: int
    image_size: tuple[int, int]
    batch_real: int  # real images per class per step (the setting, capped by the smallest class)
    device: torch.device
    precision: str
    num_blocks: int
    own: range  # the classes whose real images and synthetic pixels this process holds
    batch_norm: bool  # the backbone has batch norm: a forward call's batch decides its statistics

    @property
    def num_classes(self) -> int:
        return len(self.class_idx)

    @classmethod
    def build(
        cls,
        cfg: DistillConfig,
        data: Dataset,
        prep: Preprocess,
        device: torch.device,
        precision: str,
        own: range | None = None,
    ) -> Task:
        counts = torch.bincount(data.train_labels, minlength=data.num_classes)
        for c, n in enumerate(counts.tolist()):
            if n == 0:
                raise AtomddError(
                    f"class {data.classes[c]!r} of {cfg.dataset} has no train images, so it cannot be "
                    "distilled; give every class at least one train image"
                )
        for c, n in enumerate(counts.tolist()):
            if cfg.ipc > n:
                raise AtomddError(
                    f"ipc={cfg.ipc} but class {data.classes[c]!r} of {cfg.dataset} has only {n} train "
                    f"images; choose ipc from 1 to {int(counts.min())}"
                )
        own = range(data.num_classes) if own is None else own
        class_idx = data.class_indices()
        mine = torch.cat([class_idx[c] for c in own])
        images = data.train_images[mine] if len(own) < data.num_classes else data.train_images
        # without ZCA, model space is elementwise: normalised per batch, the same numbers for a quarter
        # of the memory; ZCA mixes pixels, so whitened once
        real = (images if prep.zca is None else prep(images)).to(device)
        if len(own) < data.num_classes:  # own classes index the kept images; others keep their size
            starts = torch.tensor([0, *counts[list(own)].tolist()]).cumsum(0).tolist()
            class_idx = [
                torch.arange(starts[c - own.start], starts[c - own.start + 1])
                if c in own
                else torch.zeros(n, dtype=torch.long)
                for c, n in enumerate(counts.tolist())
            ]
        net = network(cfg, data.channels, data.num_classes, data.image_size, 0, device)
        batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        if batch_norm and cfg.bn_batch == "all" and len(own) < data.num_classes:
            raise AtomddError(
                "bn_batch=all normalises every class's images in one batch-norm call, which cannot be "
                "split over ranks; run it in one process, or use bn_batch=class (per-class statistics)"
            )
        if batch_norm and cfg.bn_batch == "all" and not cfg.run.fused:
            raise AtomddError(
                "bn_batch=all puts every class in one forward call, fused=false one class per call; "
                "drop one of them"
            )
        return cls(
            cfg=cfg,
            match=cfg.match,
            dsa=DSAConfig(strategy=cfg.dsa),
            real=real,
            prep=prep,
            class_idx=[i.to(device) for i in class_idx],
            channels=data.channels,
            image_size=data.image_size,
            batch_real=min(cfg.batch_real, int(counts.min())),
            device=device,
            precision=precision,
            num_blocks=len(net.features(prep(images[:1]).to(device)).activations),
            own=own,
            batch_norm=batch_norm,
        )

    def network(self, step: int) -> FeatureModel:
        return network(self.cfg, self.channels, self.num_classes, self.image_size, step, self.device)

    def real_images(self, idx: torch.Tensor) -> torch.Tensor:
        """The real images at `idx` (into `real`), in model space."""
        x = self.real[idx]
        return self.prep(x) if x.dtype == torch.uint8 else x

    def initial_images(self) -> torch.Tensor:
        """The synthetic images of the classes `own` at step 0: real images of each class, or noise,
        drawn from the seed (for every class, so a share is that share of the whole)."""
        gen = generator(self.cfg.seed, -1, "init")
        ipc, own = self.cfg.ipc, self.own
        if self.cfg.init == "noise":
            n = self.num_classes * ipc
            noise = torch.randn(n, self.channels, *self.image_size, generator=gen)
            return noise[own.start * ipc : own.stop * ipc].to(self.device)
        picks = [torch.randperm(len(idx), generator=gen)[:ipc] for idx in self.class_idx]
        mine = [self.class_idx[c][picks[c].to(self.class_idx[c].device)] for c in own]
        return self.real_images(torch.cat(mine))

    def class_chunks(self, classes: range | None = None) -> list[range]:
        """`classes` (default: `own`) in the chunks one forward pass takes. With batch norm the
        chunks are the statistics' groups: one class (bn_batch=class) or every class (all)."""
        classes = self.own if classes is None else classes
        if classes.start < self.own.start or classes.stop > self.own.stop:
            raise ValueError(f"classes {classes} outside this task's own classes {self.own}")
        if self.batch_norm:
            size = len(classes) if self.cfg.bn_batch == "all" else 1
        elif self.cfg.run.fused:
            per_class = self.batch_real + self.cfg.ipc
            size = max(
                1, (self.cfg.run.chunk_images or (256 if self.device.type == "cpu" else 8192)) // per_class
            )
        else:
            size = 1
        return [range(classes.start + c.start, classes.start + c.stop) for c in chunks(len(classes), size)]


def _autocast(task: Task) -> torch.autocast:
    return torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=task.precision == "bf16")


def loss_and_grad(
    task: Task, syn: torch.Tensor, step: int, classes: range | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step `step`'s matching loss over `classes` (default: `task.own`), summed over the chunks;
    its gradient is accumulated into `syn.grad` (`syn`: the synthetic images of `task.own`,
    class-major). Returns the loss and its terms."""
    net = task.network(step)
    gen = generator(task.cfg.seed, step, "real")
    # every class draws its batch, in class order, whatever range is computed: the stream stays one
    idx = torch.stack(
        [i[torch.randperm(len(i), generator=gen)[: task.batch_real].to(i.device)] for i in task.class_idx]
    )
    aug_gen = generator(task.cfg.seed, step, "aug")
    aug = draw(task.num_classes, task.image_size, aug_gen, task.dsa, task.device)
    ipc, b = task.cfg.ipc, task.batch_real
    total = torch.zeros((), device=task.device)
    terms: dict[str, torch.Tensor] = {}
    for chunk in task.class_chunks(classes):
        labels = torch.arange(chunk.start, chunk.stop, device=task.device)
        with torch.no_grad(), _autocast(task):
            real = aug.apply(
                task.real_images(idx[chunk.start : chunk.stop].flatten()), labels.repeat_interleave(b)
            )
            real_stats = class_statistics(net.features(real), len(chunk), task.match)
        with _autocast(task):
            own = syn[(chunk.start - task.own.start) * ipc : (chunk.stop - task.own.start) * ipc]
            feats = net.features(aug.apply(own, labels.repeat_interleave(ipc)))
            syn_stats = class_statistics(feats, len(chunk), task.match)
        loss, chunk_terms = matching_loss(syn_stats, real_stats, task.num_blocks, task.match)
        loss.backward()
        total += loss.detach()
        for name, v in chunk_terms.items():
            terms[name] = terms.get(name, 0) + v
    return total, terms
