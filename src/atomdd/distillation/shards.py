"""A distillation run over torchrun's ranks: which classes each rank owns, the ZCA fitted once, the
pixels gathered and the per-step sums.

Classes are independent given the step's network, which every rank draws from the same seed, so a
rank needs only its own classes' real images and synthetic pixels and no gradient crosses ranks;
what does cross is small: one all-reduce per step (the loss, its terms, the stop flag), the ZCA
once, the pixels at checkpoints and at the end. In a single process every helper is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atomdd import parallel
from atomdd.data import Dataset
from atomdd.data.transforms import ZCA, Preprocess
from atomdd.errors import AtomddError


@dataclass(frozen=True)
class Shards:
    """The classes of every rank (`shares[r]`, contiguous, rank order) and this rank's."""

    shares: list[range]
    rank: int
    ipc: int

    @classmethod
    def of(cls, num_classes: int, ipc: int) -> Shards:
        world = parallel.world_size()
        if world > num_classes:
            raise AtomddError(f"{world} ranks for {num_classes} classes: start at most {num_classes} ranks")
        return cls([parallel.share(num_classes, r, world) for r in range(world)], parallel.rank(), ipc)

    @property
    def world(self) -> int:
        return len(self.shares)

    @property
    def own(self) -> range:
        return self.shares[self.rank]

    def rows(self, classes: range | None = None) -> slice:
        """The rows of `classes` (default: this rank's) in the whole class-major set."""
        classes = self.own if classes is None else classes
        return slice(classes.start * self.ipc, classes.stop * self.ipc)

    def gather(self, local: torch.Tensor, what: str, everywhere: bool = False) -> torch.Tensor | None:
        """The whole set's rows from every rank's share, on the main process (None elsewhere) or
        `everywhere`."""
        counts = [len(s) * self.ipc for s in self.shares]
        return parallel.gather_rows(local.detach().contiguous(), counts, what, everywhere)

    def reduce(self, loss: torch.Tensor, terms: dict, stop: object, step: int) -> tuple[float, dict, bool]:
        """The loss and its terms summed over the ranks, and whether any rank was asked to stop:
        one all-reduce, so every rank logs the same loss and stops (or fails) at the same step."""
        if self.world == 1:
            return float(loss), terms, bool(stop)
        flag = torch.tensor(float(bool(stop)), device=loss.device)
        values = [loss.float(), *(torch.as_tensor(v, device=loss.device).float() for v in terms.values())]
        packed = parallel.all_sum(torch.stack([*values, flag]), f"step {step}'s loss all-reduce").tolist()
        return packed[0], dict(zip(terms, packed[1:-1], strict=True)), packed[-1] > 0


def preprocess(data: Dataset, zca: bool, device: torch.device) -> Preprocess:
    """The run's preprocessing; with ZCA and several ranks, fitted on rank 0 alone and broadcast
    (the fit reads every train image and an eigendecomposition; the others would repeat it)."""
    if not zca or parallel.world_size() == 1:
        return data.preprocess(zca)
    main = parallel.is_main_process()
    prep = data.preprocess(True) if main else Preprocess(data.mean, data.std, zca=True)
    _share_fit(prep.zca, data.channels * data.image_size[0] * data.image_size[1], device, "the ZCA")
    return prep


def _share_fit(zca: ZCA, d: int, device: torch.device, what: str) -> None:
    """The main process's fit of `zca` (of d-value images), loaded on every rank."""
    if parallel.world_size() == 1:
        return
    fit = (
        [zca.mean, zca.eigvecs, zca.eigvals]
        if parallel.is_main_process()
        else [torch.zeros(d), torch.zeros(d, d), torch.zeros(d, dtype=torch.float64)]
    )
    zca.load(*(parallel.broadcast(t.to(device), f"{what} broadcast").cpu() for t in fit))


def zca_refit(own: torch.Tensor, shards: Shards, eps: float) -> tuple[torch.Tensor, dict]:
    """This rank's initial images whitened once more, by a ZCA (ε `eps`) fitted on the whole
    initial set: the published DataDAM code's refit with --zca. Fitted on the main process and
    broadcast. Returns the images and what was done, for run.json."""
    whole = shards.gather(own, "the initial images' gather")  # None off the main process
    zca = ZCA(eps)
    record: dict = {"eps": eps}
    if whole is not None:
        zca.fit([whole.cpu()])
        record |= {"images": len(whole), "std_before": float(whole.std())}
        record["std_after"] = float(zca(whole.cpu()).std())
    _share_fit(zca, own[0].numel(), own.device, "the refit ZCA")
    return zca(own.cpu()).to(own.device), record
