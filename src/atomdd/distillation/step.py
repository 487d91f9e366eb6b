"""One distillation step, pure: synthetic pixels matched to real data through a frozen network.

A step draws its network (a fresh random one, or with `pool_dir` a trained one: a pool member at one
of its snapshots, optionally mixed with its initial weights), a real batch per class and one
augmentation per class from seeds derived from (seed, step) alone, so its result does not depend
on what ran before it: resuming from a checkpoint, or sharding classes over processes, reproduces
the same run. A factor set's stored images are decoded (`sets.decode`) before the augmentation, so
the statistics and the calibration see ipc·factor² images a class. A `Task` holds the
real images of its own range of classes (a torchrun rank's share, `parallel.share`; all classes in
one process), and `loss_and_grad` works on any range within it; the classes of a range
go through one forward pass (instance norm keeps samples independent), in chunks only to bound
memory, and the real branch runs without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atomdd.augment import DSAConfig, draw
from atomdd.data import Dataset
from atomdd.data.transforms import Preprocess
from atomdd.distillation.config import DistillConfig, step_seed
from atomdd.errors import AtomddError
from atomdd.matching import matching_loss, statistics
from atomdd.models import FeatureModel, has_batch_norm, seeded_model
from atomdd.parallel import chunks
from atomdd.pool import Pool, for_run
from atomdd.sets import decode, encode, factor_problem
from atomdd.settings import MatchConfig


def generator(seed: int, step: int, purpose: str) -> torch.Generator:
    """The CPU generator of one purpose ("net", "pool", "real", "aug", "init") at one step."""
    return torch.Generator().manual_seed(step_seed(seed, step, purpose))


def run_pool(cfg: DistillConfig) -> Pool | None:
    """The pool a run's `pool_dir` setting names, loaded (None without one)."""
    if not cfg.pool_dir:
        return None
    return for_run(cfg.pool_dir, cfg.dataset, cfg.model, cfg.zca, cfg.run.data_root)


def pool_pick(seed: int, step: int, pool: Pool) -> tuple[int, int, float]:
    """The (member, snapshot epoch) of `pool` step `step` matches through, and its interpolation
    weight l ~ U(0, 1) (drawn whether used or not): from (seed, step) alone, so a resumed run and
    every rank pick the same."""
    gen = generator(seed, step, "pool")
    member, epoch = pool.choices[int(torch.randint(len(pool.choices), (), generator=gen))]
    return member, epoch, float(torch.rand((), generator=gen))


def network(
    cfg: DistillConfig,
    channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    step: int,
    device,
    pool: Pool | None = None,
) -> FeatureModel:
    """The step's frozen network, the same for a given (seed, step) on any device: freshly
    initialised, or from `pool` (`pool_pick`; mixed with its initial weights with `pool_interp`)."""
    if pool is None:
        seed = step_seed(cfg.seed, step, "net")
        name = cfg.model_ref().name
        net = seeded_model(seed, name, channels, num_classes, image_size, **cfg.model_options())
    else:
        member, epoch, mix = pool_pick(cfg.seed, step, pool)
        net = pool.network(member, epoch, mix if cfg.pool_interp else None)
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
    pool: Pool | None  # the trained networks steps match through (None: random ones)

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
        if problem := factor_problem(cfg.factor, data.image_size):
            raise AtomddError(problem)
        counts = torch.bincount(data.train_labels, minlength=data.num_classes)
        for c, n in enumerate(counts.tolist()):
            if n == 0:
                raise AtomddError(
                    f"class {data.classes[c]!r} of {cfg.dataset} has no train images, so it cannot be "
                    "distilled; give every class at least one train image"
                )
        per_class = cfg.ipc * cfg.factor**2  # real images the initial set is made of
        for c, n in enumerate(counts.tolist()):
            if per_class > n:
                ipc = f"ipc={cfg.ipc}" + (f" × factor² = {per_class}" if cfg.factor > 1 else "")
                raise AtomddError(
                    f"{ipc} but class {data.classes[c]!r} of {cfg.dataset} has only {n} train "
                    f"images; choose ipc from 1 to {int(counts.min()) // cfg.factor**2}"
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
        pool = run_pool(cfg)
        if pool is not None:
            pool.check(data, prep.zca is not None, cfg.model, "this run")
        net = network(cfg, data.channels, data.num_classes, data.image_size, 0, device, pool)
        batch_norm = has_batch_norm(net)
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
            pool=pool,
        )

    @property
    def per_class(self) -> int:
        """Synthetic images a class trains on: ipc, times factor² decoded tiles."""
        return self.cfg.ipc * self.cfg.factor**2

    def network(self, step: int) -> FeatureModel:
        return network(
            self.cfg, self.channels, self.num_classes, self.image_size, step, self.device, self.pool
        )

    def real_images(self, idx: torch.Tensor) -> torch.Tensor:
        """The real images at `idx` (into `real`), in model space."""
        x = self.real[idx]
        return self.prep(x) if x.dtype == torch.uint8 else x

    def initial_images(self) -> torch.Tensor:
        """The synthetic images of the classes `own` at step 0: real images of each class, or noise,
        drawn from the seed (for every class, so a share is that share of the whole). With
        factor f, each stored image is f² real images of its class, downscaled ×1/f and tiled."""
        gen = generator(self.cfg.seed, -1, "init")
        ipc, own = self.cfg.ipc, self.own
        if self.cfg.init == "noise":
            n = self.num_classes * ipc
            noise = torch.randn(n, self.channels, *self.image_size, generator=gen)
            return noise[own.start * ipc : own.stop * ipc].to(self.device)
        picks = [torch.randperm(len(idx), generator=gen)[: self.per_class] for idx in self.class_idx]
        mine = [self.class_idx[c][picks[c].to(self.class_idx[c].device)] for c in own]
        return encode(self.real_images(torch.cat(mine)), self.cfg.factor)

    def class_chunks(self, classes: range | None = None) -> list[range]:
        """`classes` (default: `own`) in the chunks one forward pass takes. With batch norm the
        chunks are the statistics' groups: one class (bn_batch=class) or every class (all)."""
        classes = self.own if classes is None else classes
        if classes.start < self.own.start or classes.stop > self.own.stop:
            raise ValueError(f"classes {classes} outside this task's own classes {self.own}")
        if self.batch_norm:
            size = len(classes) if self.cfg.bn_batch == "all" else 1
        elif self.cfg.run.fused:
            per_class = self.batch_real + self.per_class
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
    its gradient is accumulated into `syn.grad` (`syn`: the stored synthetic images of `task.own`,
    class-major). With `match.calib`, the loss adds calib · Σ_k the mean cross-entropy of class k's
    augmented synthetic images under the network (term "calib"). Returns the loss and its terms."""
    net = task.network(step)
    gen = generator(task.cfg.seed, step, "real")
    # every class draws its batch, in class order, whatever range is computed: the stream stays one
    idx = torch.stack(
        [i[torch.randperm(len(i), generator=gen)[: task.batch_real].to(i.device)] for i in task.class_idx]
    )
    aug_gen = generator(task.cfg.seed, step, "aug")
    aug = draw(task.num_classes, task.image_size, aug_gen, task.dsa, task.device)
    ipc, b, n, factor = task.cfg.ipc, task.batch_real, task.per_class, task.cfg.factor
    seed = step_seed(task.cfg.seed, step, "distance")  # a drawing distance's (cf's frequencies)
    total = torch.zeros((), device=task.device)
    terms: dict[str, torch.Tensor] = {}
    for chunk in task.class_chunks(classes):
        labels = torch.arange(chunk.start, chunk.stop, device=task.device)
        with torch.no_grad(), _autocast(task):
            real = aug.apply(
                task.real_images(idx[chunk.start : chunk.stop].flatten()), labels.repeat_interleave(b)
            )
            real_stats, _ = statistics(net, real, len(chunk), task.match, task.num_blocks)
        with _autocast(task):
            own = syn[(chunk.start - task.own.start) * ipc : (chunk.stop - task.own.start) * ipc]
            own, own_labels = decode(own, labels.repeat_interleave(ipc), factor)
            images = aug.apply(own, own_labels)
            syn_stats, embedding = statistics(net, images, len(chunk), task.match, task.num_blocks)
        loss, chunk_terms = matching_loss(syn_stats, real_stats, task.num_blocks, task.match, seed)
        if task.match.calib:
            with _autocast(task):
                logits = net.classifier(embedding)
            ce = F.cross_entropy(logits.float(), own_labels, reduction="sum") / n  # Σ_k class means
            chunk_terms["calib"] = (task.match.calib * ce).detach()
            loss = loss + task.match.calib * ce
        loss.backward()
        total += loss.detach()
        for name, v in chunk_terms.items():
            terms[name] = terms.get(name, 0) + v
    return total, terms
