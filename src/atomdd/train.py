"""N fresh models trained at once on a small set, and tested: the engine under the evaluation
protocol (`evaluate.py`) and the coresets' embedding network (`coreset.py`).

The N repeats (fresh models of one architecture) can train *together* (`batched`): their
parameters are stacked and the model runs under `torch.vmap` (which turns each convolution into one
grouped convolution), so one optimiser step updates every repeat; by default on CUDA only, as on a
CPU it measured no faster (see `use_batched`). Repeat r draws its initial weights, its batch order
and its augmentations from seeds derived from (seed, r) alone, and the batched and the sequential
paths consume them in the same order through one training loop (`_fit`), so both give the same
per-repeat results (to float tolerance). Batch-norm models work in the batched path too: their
running statistics are stacked buffers updated in place under vmap.

Two options change what a batch teaches (DD-Ranking's evaluation options, reported apart from the
hard-label protocol): CutMix (`TrainConfig.cutmix`, drawn from each repeat's own stream, so the
augmentations stay those of the hard-label protocol) and a `Teacher`, whose softened outputs on each
augmented batch replace the labels. Either makes the targets probabilities, and the loss the KL
divergence to them (for CutMix's mixed labels, the gradient of CutMix's λ-weighted cross-entropies).
`train_models`' `on_weights` hook hands out the weights after any epoch (a pool's snapshots).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from atomdd.augment import Draw, DSAConfig, draw
from atomdd.hardware import resolve_device
from atomdd.io import derive_seed
from atomdd.models import FeatureModel, ModelRef, seeded_model
from atomdd.parallel import chunks
from atomdd.settings import TrainConfig


def repeat_seed(seed: int, repeat: int, purpose: str) -> int:
    """A 63-bit seed for one purpose of one repeat, independent of every other repeat and of the path."""
    return derive_seed("eval", seed, repeat, purpose)


def init_models(
    model: str | ModelRef, channels: int, num_classes: int, image_size: int, repeats: Sequence[int], seed: int
) -> list[FeatureModel]:
    """Fresh models, repeat r initialised from (seed, r) on the CPU: identical on every device. Options
    not given take the registry's defaults for the image size (ConvNet: depth 4 from 64 px on, the
    published evaluation network)."""
    ref = ModelRef.parse(model)  # an unknown name or option is an error before any work
    options = ref.options_for(image_size)
    return [
        seeded_model(repeat_seed(seed, r, "init"), ref.name, channels, num_classes, image_size, **options)
        for r in repeats
    ]


class _RepeatStream:
    """The random choices of one repeat (batch order, augmentations), drawn in protocol order; CutMix
    draws from a stream of its own (`mix`), so the others are those of the hard-label protocol."""

    def __init__(self, seed: int, repeat: int, dsa: DSAConfig, size: tuple[int, int]) -> None:
        self.gen = torch.Generator().manual_seed(repeat_seed(seed, repeat, "train"))
        self.mix = torch.Generator().manual_seed(repeat_seed(seed, repeat, "cutmix"))
        self.dsa = dsa if dsa.ops() else None
        self.size = size

    def order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)

    def draw(self, count: int) -> Draw | None:
        return draw(count, self.size, self.gen, self.dsa) if self.dsa is not None else None


@dataclass(frozen=True)
class Teacher:
    """A trained network whose softened outputs on each augmented batch are the targets: the
    student trains on KL(softmax(teacher/T) ‖ softmax(student/T)) · T² (Hinton's scaling)."""

    model: nn.Module
    temperature: float = 1.0

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(x).float() / self.temperature, -1)


def cutmix(x: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) with β = 1: λ ~ U(0, 1), a box of (1 − λ) of the area at a uniform
    centre (clipped at the edges) pasted into every image from the same batch shuffled, and the
    targets (B×K probabilities) mixed by the box's real area."""
    b, _, h, w = x.shape
    lam = float(torch.rand((), generator=gen))
    perm = torch.randperm(b, generator=gen).to(x.device)
    cy, cx = (int(torch.randint(n, (), generator=gen)) for n in (h, w))
    side = math.sqrt(1.0 - lam)
    ch, cw = int(h * side), int(w * side)
    r0, r1 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    c0, c1 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    mixed = x.clone()
    mixed[:, :, r0:r1, c0:c1] = x[perm, :, r0:r1, c0:c1]
    area = (r1 - r0) * (c1 - c0) / (h * w)
    return mixed, (1.0 - area) * target + area * target[perm]


def _soft_batch(
    xb: torch.Tensor,
    yb: torch.Tensor,
    streams: list[_RepeatStream],
    config: TrainConfig,
    num_classes: int,
    teacher: Teacher | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of R repeats (R·B images, R×B labels) with CutMix applied per repeat (with
    probability `config.cutmix`, from its own stream), and its targets, R×B×K probabilities: the
    teacher's of the images as mixed, else the labels (mixed by area)."""
    b = yb.shape[1]
    images, targets = [], []
    for s, x, y in zip(streams, xb.split(b), yb, strict=True):
        t = F.one_hot(y, num_classes).float()
        if config.cutmix and float(torch.rand((), generator=s.mix)) < config.cutmix:
            x, t = cutmix(x, t, s.mix)
        images.append(x)
        targets.append(t)
    xb, target = torch.cat(images), torch.stack(targets)
    if teacher is not None:
        target = teacher.targets(xb).view_as(target)
    return xb, target


def _kl(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per sample, KL(target ‖ softmax(logits / T)) · T²."""
    log_q = F.log_softmax(logits.float() / temperature, -1)
    return F.kl_div(log_q, target, reduction="none").sum(-1) * temperature**2


def _cat_draws(draws: list[Draw]) -> Draw:
    if len(draws) == 1:
        return draws[0]
    return Draw(**{f.name: torch.cat([getattr(d, f.name) for d in draws]) for f in fields(Draw)})


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _lr(config: TrainConfig, epoch: int) -> float:
    return config.lr * (config.lr_decay if epoch >= int(config.epochs * config.decay_at) else 1.0)


def use_batched(config: TrainConfig, device: torch.device) -> bool:
    """The path the repeats take: `config.batched`, or by default batched on CUDA only.

    On the CPU measured (benchmarks/eval_speed.py: 2-core AVX2 EPYC) the sequential path was
    1.1–2× faster: one model's step already runs at over half the core's fp32 matmul rate, oneDNN's
    grouped convolution (what vmap lowers a stacked convolution to) is no faster than separate
    ones, and vmap's group-norm rule is 3–10× slower than the fused per-model kernel. On a GPU such
    small steps are bound by kernel launches, which stacking amortises (not measured: no GPU here).
    """
    return config.batched if config.batched is not None else device.type == "cuda"


def _stacks(n: int, config: TrainConfig, batched: bool) -> list[range]:
    return chunks(n, (config.stack_size or n) if batched else 1)


def _bf16(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.bfloat16)


class _Bf16Conv2d(nn.Conv2d):
    """A Conv2d computed in bf16 with an fp32 output. Under vmap, autocast leaves convolutions in
    fp32 and vmap's batch-norm rule rejects bf16 inputs with fp32 statistics (PyTorch 2.13,
    measured), so the batched bf16 path casts the heavy ops explicitly and keeps the rest fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(_bf16(x), _bf16(self.weight), _bf16(self.bias)).float()


class _Bf16Linear(nn.Linear):
    """A Linear computed in bf16 with an fp32 output (see `_Bf16Conv2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_bf16(x), _bf16(self.weight), _bf16(self.bias)).float()


class _One:
    """One model, as the training loop and the test pass see a group of repeats (R = 1)."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        self.model, self.precision = model, precision

    def parameters(self) -> Iterator[torch.Tensor]:
        return self.model.parameters()

    def mode(self, train: bool) -> None:
        self.model.train(train)

    def loss(
        self, xb: torch.Tensor, yb: torch.Tensor, device: torch.device, temperature: float = 1.0
    ) -> torch.Tensor:
        """The batch's mean loss: cross-entropy with labels (1×B), KL with probabilities (1×B×K)."""
        with _autocast(device, self.precision):
            logits = self.model(xb)
        if yb.is_floating_point():
            return _kl(logits, yb.flatten(0, 1), temperature).mean()
        return F.cross_entropy(logits.float(), yb.flatten())

    def predict(self, xb: torch.Tensor, device: torch.device) -> torch.Tensor:
        with _autocast(device, self.precision):
            return self.model(xb).argmax(-1)[None]

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}]

    def finish(self) -> None:
        pass


class _Stack:
    """R copies of one architecture as stacked tensors, called under vmap (repeat r = slice r)."""

    def __init__(self, models: Sequence[nn.Module], precision: str = "fp32") -> None:
        self.models, self.precision = list(models), precision
        params, self.buffers = stack_module_state(self.models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(self.models[0]).to("meta")  # the fp32 master weights stay in params
        if precision == "bf16":
            for m in self.base.modules():
                if type(m) is nn.Conv2d:
                    m.__class__ = _Bf16Conv2d
                elif type(m) is nn.Linear:
                    m.__class__ = _Bf16Linear

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits R×B×K of R×B×… inputs (one batch per repeat), or of one B×… batch for all of them."""
        return torch.vmap(self._call, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def parameters(self) -> list[torch.Tensor]:
        # SGD's momentum and weight decay are elementwise: one optimiser over stacked parameters is
        # exactly R independent optimisers
        return list(self.params.values())

    def mode(self, train: bool) -> None:
        self.base.train(train)

    def loss(
        self, xb: torch.Tensor, yb: torch.Tensor, device: torch.device, temperature: float = 1.0
    ) -> torch.Tensor:
        r, b = yb.shape[:2]
        with _autocast(device, self.precision):
            logits = self(xb.view(r, b, *xb.shape[1:]))
        if yb.is_floating_point():
            loss = _kl(logits.flatten(0, 1), yb.flatten(0, 1), temperature)
        else:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="none")
        return loss.view(r, b).mean(1).sum()  # each repeat's loss is its own batch mean

    def predict(self, xb: torch.Tensor, device: torch.device) -> torch.Tensor:
        with _autocast(device, self.precision):
            return self(xb, shared=True).argmax(-1)

    def states(self) -> list[dict[str, torch.Tensor]]:
        """Each repeat's weights as its model's state dict (its slice of the stacks), on the CPU."""
        names = [name for name, _ in (*self.models[0].named_parameters(), *self.models[0].named_buffers())]
        stacked = self.params | self.buffers
        return [{n: stacked[n][r].detach().cpu().clone() for n in names} for r in range(len(self.models))]

    def finish(self) -> None:
        """Copy the stacked state into the individual models."""
        with torch.no_grad():
            for r, model in enumerate(self.models):
                for name, t in (*model.named_parameters(), *model.named_buffers()):
                    src = self.params[name] if name in self.params else self.buffers[name]
                    t.copy_(src[r])


def _group(models: Sequence[nn.Module], precision: str, batched: bool) -> _One | _Stack:
    return _Stack(models, precision) if batched else _One(models[0], precision)


def train_models(
    name: str | ModelRef,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: TrainConfig = TrainConfig(),
    repeats: Sequence[int] | None = None,
    on_epoch: Callable[[list[int], int, torch.Tensor], None] | None = None,
    teacher: Teacher | None = None,
    on_weights: Callable[[list[int], int, Callable[[], list[dict[str, torch.Tensor]]]], None] | None = None,
) -> list[FeatureModel]:
    """Train `config.repeats` fresh models (or the given repeat numbers) on model-space `images`.
    `on_epoch(repeats, epoch, loss)`, if given, is called after every epoch (counted from 1) of
    every group of repeats trained together, with their mean training loss as a 0-d tensor (read it only
    when needed: reading it waits for the device). `teacher`: its soft labels replace the labels.
    `on_weights(repeats, epoch, states)`, after every epoch too: `states()` gives those repeats'
    weights (state dicts on the CPU), copied only when called.

    The precision is used as given (resolve it first with `hardware.resolve_precision`, as
    `evaluate_set` does); the device is `config.device`. Returns the trained models, on that device.
    """
    device = resolve_device(config.device)
    x, y = images.to(device, torch.float32), labels.to(device)
    repeats = list(range(config.repeats)) if repeats is None else list(repeats)
    size = (x.shape[2], x.shape[3])
    models = [m.to(device) for m in init_models(name, x.shape[1], num_classes, size[0], repeats, config.seed)]
    dsa = DSAConfig(strategy=config.dsa)
    streams = [_RepeatStream(config.seed, r, dsa, size) for r in repeats]
    batched = use_batched(config, device)
    for part in _stacks(len(repeats), config, batched):
        group = _group([models[i] for i in part], config.precision, batched)
        mine = [repeats[i] for i in part]
        hook = partial(on_epoch, mine) if on_epoch is not None else None
        weights = partial(on_weights, mine) if on_weights is not None else None
        _fit(group, [streams[i] for i in part], x, y, config, device, num_classes, hook, teacher, weights)
    return models


def _fit(
    group: _One | _Stack,
    streams: list[_RepeatStream],
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    num_classes: int,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
    teacher: Teacher | None = None,
    on_weights: Callable[[int, Callable[[], list[dict[str, torch.Tensor]]]], None] | None = None,
) -> None:
    """The training loop of a group of repeats: the schedule, the batches and the augmentations
    (then CutMix and the teacher's targets, where asked for)."""
    soft = bool(config.cutmix) or teacher is not None
    temperature = teacher.temperature if teacher is not None else 1.0
    opt = torch.optim.SGD(
        group.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    group.mode(train=True)
    for epoch in range(config.epochs):
        for param_group in opt.param_groups:
            param_group["lr"] = _lr(config, epoch)
        orders = torch.stack([s.order(len(x)) for s in streams]).to(device)
        total, batches = torch.zeros((), device=device), 0
        for start in range(0, len(x), config.batch_size):
            idx = orders[:, start : start + config.batch_size]
            xb = x[idx.flatten()]
            draws = [s.draw(idx.shape[1]) for s in streams]
            if draws[0] is not None:
                xb = _cat_draws(draws).to(device).apply(xb)
            yb = y[idx]
            if soft:
                xb, yb = _soft_batch(xb, yb, streams, config, num_classes, teacher)
            loss = group.loss(xb, yb, device, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_epoch is not None:
                total, batches = total + loss.detach(), batches + 1
        if on_epoch is not None:  # the group's loss sums its repeats' batch means
            on_epoch(epoch + 1, total / (max(batches, 1) * len(streams)))
        if on_weights is not None:
            on_weights(epoch + 1, group.states)
    group.finish()


@torch.no_grad()
def test_models(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig = TrainConfig(),
) -> list[float]:
    """Accuracy (%) of each model (eval mode) on model-space test `images`, in batches, no autograd."""
    device = resolve_device(config.device)
    x, y = images.to(device, torch.float32), labels.to(device)
    correct = []
    batched = use_batched(config, device)
    for part in _stacks(len(models), config, batched):
        members = [models[i].eval() for i in part]
        group = _group(members, config.precision, batched)
        group.mode(train=False)
        hits = torch.zeros(len(members), dtype=torch.long, device=device)
        chunk = max(1, config.test_batch // len(members))
        for xb, yb in zip(x.split(chunk), y.split(chunk), strict=True):
            hits += (group.predict(xb, device) == yb).sum(1)
        correct += hits.tolist()
    return [100.0 * c / len(y) for c in correct]
