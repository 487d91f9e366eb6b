"""One distillation step, pure: synthetic pixels matched to real data through a random, frozen network.

A step draws a fresh network, a real batch per class and one augmentation per class from seeds
derived from (seed, step) alone, so its result does not depend on what ran before it: resuming
from a checkpoint, or sharding classes over processes, reproduces the same run. `loss_and_grad`
works on any range of classes (a process of a sharded run takes its share); the classes of a range
go through one forward pass (instance norm keeps samples independent), in chunks only to bound
memory, and the real branch runs without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atomdd.augment import DSAConfig, draw
from atomdd.data import Dataset
from atomdd.data.transforms import Preprocess
from atomdd.distillation.config import DistillConfig, step_seed, validate
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
    """What every step of a run reads and none changes: the settings, the real images in model
    space on the device, and the train indices of each class."""

    cfg: DistillConfig
    match: MatchConfig
    dsa: DSAConfig
    real: torch.Tensor
    class_idx: list[torch.Tensor]
    channels: int
    image_size: tuple[int, int]
    batch_real: int  # real images per class per step (the setting, capped by the smallest class)
    device: torch.device
    precision: str
    num_blocks: int

    @property
    def num_classes(self) -> int:
        return len(self.class_idx)

    @classmethod
    def build(
        cls, cfg: DistillConfig, data: Dataset, prep: Preprocess, device: torch.device, precision: str
    ) -> Task:
        validate(cfg)
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
        real = prep(data.train_images).to(device)
        net = network(cfg, data.channels, data.num_classes, data.image_size, 0, device)
        batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        if batch_norm and cfg.run.fused:
            raise AtomddError(
                "the backbone uses batch norm, which mixes the classes of a fused pass; "
                "use an instance-norm backbone or set fused=false"
            )
        return cls(
            cfg=cfg,
            match=cfg.match,
            dsa=DSAConfig(strategy=cfg.dsa),
            real=real,
            class_idx=[i.to(device) for i in data.class_indices()],
            channels=data.channels,
            image_size=data.image_size,
            batch_real=min(cfg.batch_real, int(counts.min())),
            device=device,
            precision=precision,
            num_blocks=len(net.features(real[:1]).activations),
        )

    def network(self, step: int) -> FeatureModel:
        return network(self.cfg, self.channels, self.num_classes, self.image_size, step, self.device)

    def initial_images(self) -> torch.Tensor:
        """The synthetic images at step 0: real images of each class, or noise, drawn from the seed."""
        gen = generator(self.cfg.seed, -1, "init")
        if self.cfg.init == "noise":
            n = self.num_classes * self.cfg.ipc
            return torch.randn(n, self.channels, *self.image_size, generator=gen).to(self.device)
        picks = [
            idx[torch.randperm(len(idx), generator=gen)[: self.cfg.ipc].to(idx.device)]
            for idx in self.class_idx
        ]
        return self.real[torch.cat(picks)].clone()

    def class_chunks(self, classes: range | None = None) -> list[range]:
        """`classes` (default: all) in the chunks one forward pass takes."""
        classes = range(self.num_classes) if classes is None else classes
        per_class = self.batch_real + self.cfg.ipc
        images = self.cfg.run.chunk_images or (256 if self.device.type == "cpu" else 8192)
        size = max(1, images // per_class) if self.cfg.run.fused else 1
        return [range(classes.start + c.start, classes.start + c.stop) for c in chunks(len(classes), size)]


def _autocast(task: Task) -> torch.autocast:
    return torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=task.precision == "bf16")


def loss_and_grad(
    task: Task, syn: torch.Tensor, step: int, classes: range | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step `step`'s matching loss over `classes` (default: all), summed over the chunks; its
    gradient is accumulated into `syn.grad` (`syn`: all K·IPC synthetic images, class-major).
    Returns the loss and its terms."""
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
            real = aug.apply(task.real[idx[chunk.start : chunk.stop].flatten()], labels.repeat_interleave(b))
            real_stats = class_statistics(net.features(real), len(chunk), task.match)
        with _autocast(task):
            own = syn[chunk.start * ipc : chunk.stop * ipc]
            feats = net.features(aug.apply(own, labels.repeat_interleave(ipc)))
            syn_stats = class_statistics(feats, len(chunk), task.match)
        loss, chunk_terms = matching_loss(syn_stats, real_stats, task.num_blocks, task.match)
        loss.backward()
        total += loss.detach()
        for name, v in chunk_terms.items():
            terms[name] = terms.get(name, 0) + v
    return total, terms
