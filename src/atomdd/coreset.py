"""Coreset baselines: exactly IPC real train images per class, chosen at random, by herding or by
k-center, stored in model space like a distilled set so they go through the same evaluation.

Herding (Welling 2009; Rebuffi et al.'s iCaRL form) greedily adds the sample that brings the mean
of the selected embeddings closest to the class mean. K-center (Sener & Savarese 2018) greedily
adds the sample farthest from its nearest selected centre; the first centre is the sample closest
to the class mean, so the selection depends only on the embedding. Both work in the embedding space
of a ConvNet, as DC/DSA's baselines do (their paper: features of a network trained on the whole
data). Default here: a *randomly initialised* ConvNet (`embed="random"`): it costs seconds instead
of a whole-data training run (minutes to hours on a CPU), and random ConvNet features are the very
space DM/DataDAM match in. `embed="trained"` trains the ConvNet on the whole train set first, with
the evaluation protocol for `embed_epochs` epochs, for comparisons with the published tables.
Under torchrun the classes are spread over the ranks (embedding and selection), with rank 0's
network broadcast to all, and the picks gathered in class order: the same set as one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from atomdd import parallel, peers
from atomdd.config import apply_overrides
from atomdd.data import Dataset, as_dataset
from atomdd.data.transforms import Preprocess
from atomdd.errors import AtomddError
from atomdd.hardware import resolve_device
from atomdd.models import FeatureModel, ModelRef
from atomdd.progress import Progress, silenced, stage
from atomdd.sets import SyntheticSet
from atomdd.settings import EMBEDDINGS, CoresetConfig, TrainConfig
from atomdd.train import init_models, train_models


def _check_k(emb: torch.Tensor, k: int) -> None:
    if emb.ndim != 2:
        raise AtomddError(f"embeddings must be an N×D matrix, got shape {tuple(emb.shape)}")
    if not 1 <= k <= len(emb):
        raise AtomddError(f"cannot select {k} of {len(emb)} samples")


def herding(emb: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `k` rows of `emb` (N×D), in selection order, by greedy herding (no repeats).

    Step t picks argmin_i ‖μ − (s + e_i)/t‖ over unselected i, s the sum of the t−1 selected rows;
    expanded as ‖e_i‖² − 2·e_i·(tμ − s) (constant dropped), one matrix-vector product per step.
    """
    _check_k(emb, k)
    e = emb.double()
    mu, total = e.mean(0), torch.zeros(e.shape[1], dtype=e.dtype, device=e.device)
    sq = (e * e).sum(1)
    taken = torch.zeros(len(e), dtype=torch.bool, device=e.device)
    picks = []
    for t in range(1, k + 1):
        score = (sq - 2 * (e @ (t * mu - total))).masked_fill(taken, float("inf"))
        i = int(score.argmin())
        picks.append(i)
        taken[i] = True
        total += e[i]
    return torch.tensor(picks, dtype=torch.long)


def kcenter(emb: torch.Tensor, k: int, first: int | None = None) -> torch.Tensor:
    """Indices of `k` rows of `emb` (N×D), in selection order, by greedy farthest-point k-center.

    The first centre is `first`, or by default the row closest to the mean; each next one is the
    row with the largest distance to its nearest centre (ties: the lowest index).
    """
    _check_k(emb, k)
    e = emb.double()
    if first is None:
        first = int(((e - e.mean(0)) ** 2).sum(1).argmin())
    picks = [first]
    nearest = ((e - e[first]) ** 2).sum(1)
    nearest[first] = -1.0  # never picked again, even among duplicates
    for _ in range(k - 1):
        i = int(nearest.argmax())
        picks.append(i)
        nearest = torch.minimum(nearest, ((e - e[i]) ** 2).sum(1))
        nearest[picks] = -1.0
    return torch.tensor(picks, dtype=torch.long)


@torch.no_grad()
def embed_images(model: FeatureModel, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`model.embed` of model-space images, in eval mode, batch by batch, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.embed(b.to(device)).float().cpu() for b in images.split(batch_size)])


def embedding_model(
    data: Dataset,
    prep: Preprocess,
    embed: str = "random",
    model: str | ModelRef = "convnet",
    seed: int = 0,
    epochs: int = 10,
    device: str = "auto",
) -> FeatureModel:
    """The network whose embedding herding and k-center work in (see the module docstring)."""
    if embed not in EMBEDDINGS:
        raise AtomddError(f"embedding network {embed!r}: choose one of {', '.join(EMBEDDINGS)}")
    if embed == "random":
        (net,) = init_models(model, data.channels, data.num_classes, data.image_size[0], [0], seed)
        return net.to(resolve_device(device))
    cfg = TrainConfig(epochs=epochs, repeats=1, seed=seed, device=device)
    with Progress("coreset: training the embedding network", epochs) as bar:
        (net,) = train_models(
            model,
            prep(data.train_images),
            data.train_labels,
            data.num_classes,
            cfg,
            on_epoch=lambda _repeats, epoch, _loss: bar.advance(1, f"epoch {epoch}/{epochs}"),
        )
    return net


def select(
    dataset: str | Dataset,
    ipc: int,
    config: CoresetConfig | str = CoresetConfig(),
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    **settings: Any,
) -> SyntheticSet:
    """A coreset of exactly `ipc` train images per class, as a `SyntheticSet` in model space.

    `config` is a `CoresetConfig`, or just its method ("random", "herding", "kcenter"); `settings`
    are `CoresetConfig` fields over it (e.g. seed=1, embed="trained"), checked like a config file's.
    `meta` records the method, seed, selected train indices (class by class, in selection order),
    the dataset hash and, for herding/k-center, the embedding network used. `progress`: show the
    loading, the embedding network's training and each class's selection (on stderr).
    """
    with silenced(not progress):
        return _select(dataset, ipc, config, data_root, settings)


def _select(
    dataset: str | Dataset,
    ipc: int,
    config: CoresetConfig | str,
    data_root: str | os.PathLike | None,
    settings: dict[str, Any],
) -> SyntheticSet:
    cfg = CoresetConfig(method=config) if isinstance(config, str) else config
    cfg = apply_overrides(cfg, settings, "coreset setting")
    method, seed, embed, embed_epochs = cfg.method, cfg.seed, cfg.embed, cfg.embed_epochs
    if ipc < 1:
        raise AtomddError(f"images per class must be at least 1, got {ipc}")
    embed_model = ModelRef.parse(cfg.embed_model)
    with stage("coreset", f"loading {dataset}" if isinstance(dataset, str) else "checking the data"):
        data = as_dataset(dataset, data_root)
    per_class = data.class_indices()
    for c, idx in enumerate(per_class):
        if len(idx) < ipc:
            raise AtomddError(
                f"class {c} ({data.classes[c]!r}) of {data.name} has {len(idx)} train images, fewer than "
                f"ipc={ipc}"
            )
    with stage("coreset", "fitting ZCA on the train images" if cfg.zca else "preparing the images"):
        prep = data.preprocess(cfg.zca)
    meta: dict = {
        "method": method,
        "kind": "coreset",
        "ipc": ipc,
        "seed": seed,
        "dataset_hash": data.content_hash,
    }
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]] for idx in per_class]
    else:
        parallel.init(cfg.device)  # under torchrun: classes over ranks, one network for them all
        net = embedding_model(data, prep, embed, embed_model, seed, embed_epochs, cfg.device)
        for t in net.state_dict().values():  # rank 0's (training on GPUs need not repeat bitwise)
            parallel.broadcast(t, "the embedding network's broadcast")
        choose = herding if method == "herding" else kcenter
        own = parallel.share(len(per_class))
        with peers.reporting_failures(), Progress(f"coreset: {method}", len(own), unit="class") as bar:
            mine = []
            for c in own:
                idx = per_class[c]
                bar.note(f"class {c + 1}/{len(per_class)} ({data.classes[c]}, {len(idx)} images)")
                mine.append(idx[choose(embed_images(net, prep(data.train_images[idx])), ipc)])
                bar.advance(1)
        picks = [p for part in parallel.gather_results(mine, "the coreset's classes") for p in part]
        meta |= {"embed": embed, "embed_model": str(embed_model)}
        if method == "kcenter":
            meta["kcenter_first"] = "closest to the class mean"
        if embed == "trained":
            meta["embed_epochs"] = embed_epochs
    indices = torch.cat(picks)
    meta["indices"] = indices.tolist()
    return SyntheticSet.of(
        prep(data.train_images[indices]), data.train_labels[indices].clone(), data, prep, meta
    )
