"""Neural architecture search with distilled data: rank a space of ConvNets by training each on a
small proxy set, and check the ranking against training on the whole data (the truth).

A search space is a list of `ModelRef`s. A job is one (architecture, proxy, seed): train one fresh
model on the proxy with `train.train_models`, test it with `train.test_models`. Its randomness
(initial weights, batch order, augmentation) comes from (seed, architecture) alone, so every proxy
of a seed starts from the same weights (a paired comparison) and no result depends on which worker
or rank ran it. `jobs()` is the list, `run_job()` runs one; `run_search()` spreads them over local
worker processes and appends each result as one JSON line (results.jsonl; the truth's lines go to a
file keyed by dataset × space × budget, so they are computed once), skipping those already there.
The summary (`summarize`, nas.json) is computed from those lines alone, so a rerun gives the same
one; its table and scatter plot are `report.tables.nas_table` and `report.charts.nas_scatter`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from atomdd import parallel, peers
from atomdd.errors import AtomddError, refuse
from atomdd.folders.layout import NAS_PLOT, NAS_RESULTS, NAS_SETTINGS, NAS_SUMMARY, NAS_TRUTH
from atomdd.io import NUMBER, append_jsonl, derive_seed, read_jsonl, write_json
from atomdd.lock import hold
from atomdd.parallel import is_main_process, map_local
from atomdd.ranking import kendall, spearman
from atomdd.settings import DSA_DEFAULT, dsa_problem, help_meta

if TYPE_CHECKING:
    from atomdd.models import ModelRef

DEPTHS, WIDTHS = (1, 2, 3, 4), (32, 64, 128, 256)
ACTS, POOLS = ("relu", "leakyrelu", "sigmoid"), ("none", "maxpool", "avgpool")
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
EARLY, RANDOM, TRUTH = "early-stop", "random", "whole"
# a results.jsonl (or truth file) row: which job it is, and what it measured
RESULT_ROW = {"arch": str, "proxy": str, "seed": int, "accuracy": NUMBER, "seconds": NUMBER}


def convnet(depth: int, width: int, act: str, norm: str, pool: str) -> ModelRef:
    from atomdd.models import ModelRef

    return ModelRef.parse(f"convnet(act={act},depth={depth},norm={norm},pool={pool},width={width})")


SPACES: dict[str, Callable[[], list[ModelRef]]] = {
    # 4 × 4 × 3 × 5 × 3 = 720: the published search space
    "full": lambda: [convnet(*p) for p in itertools.product(DEPTHS, WIDTHS, ACTS, NORMS, POOLS)],
    # five cheap ones for tests and CPU demos; the depth-3 pooled one cannot take 8×8 digits
    "small": lambda: [
        convnet(1, 32, "relu", "instancenorm", "avgpool"),
        convnet(2, 32, "relu", "batchnorm", "maxpool"),
        convnet(2, 32, "sigmoid", "none", "none"),
        convnet(1, 64, "leakyrelu", "groupnorm", "maxpool"),
        convnet(3, 32, "relu", "layernorm", "avgpool"),
    ],
    # 24 for CIFAR-10 on a CPU: depth 1–3 × four norms × (relu, avg pool | sigmoid, max pool), width 32
    "cifar-cpu": lambda: [
        convnet(d, 32, a, n, p)
        for d in (1, 2, 3)
        for n in ("none", "batchnorm", "instancenorm", "groupnorm")
        for a, p in (("relu", "avgpool"), ("sigmoid", "maxpool"))
    ],
}


def search_space(name: str | os.PathLike) -> list[ModelRef]:
    """A named space (`full`, `small`, `cifar-cpu`) or a file of model references, one a line
    (blank lines and `#` comments skipped); duplicates (by canonical spelling) are dropped."""
    from atomdd.models import ModelRef

    if str(name) in SPACES:
        refs = SPACES[str(name)]()
    elif Path(name).is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in Path(name).read_text().splitlines()]
        refs = [ModelRef.parse(ln) for ln in lines if ln]
    else:
        raise AtomddError(
            f"unknown search space {str(name)!r}: one of {', '.join(SPACES)}, or a file of model references"
        )
    unique = list(dict.fromkeys(refs))
    if not unique:
        raise AtomddError(f"search space {name} holds no architecture")
    return unique


def unbuildable(ref: ModelRef, channels: int, image_size: int) -> str | None:
    """Why `ref` cannot take C×S×S images, or None. A ConvNet skips a pool that would act on a map
    under 4 px (it never pools below 2×2), which would make it another architecture of the space."""
    from atomdd.models import check_model

    options = ref.options_for(image_size)
    if ref.name == "convnet" and options.get("pool", "avgpool") != "none":
        size = image_size + (4 if channels == 1 else 0)
        for block in range(int(options.get("depth", 3))):
            if size < 4:
                return f"block {block + 1} would pool a {size}×{size} map ({image_size} px input)"
            size //= 2
    try:
        check_model(ref.name, channels, 10, image_size, **options)
    except AtomddError as e:
        return str(e)
    return None


# --- jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NasSettings:
    """Everything a job's result depends on (settings.json of the output folder); the source of
    `atomdd nas`'s flags and `--config` keys, as every command's settings are."""

    # a flag's old name (still works, with a warning)
    RENAMED: ClassVar[dict[str, str]] = {"proxy": "proxies"}

    dataset: str = field(default="", metadata=help_meta("the dataset searched on (required)"))
    proxies: tuple[str, ...] = field(
        default=(), metadata=help_meta("set folders (distilled or coreset), random, early-stop (required)")
    )
    space: tuple[str, ...] = ()  # canonical model references (`search_space`; the CLI's --space)
    space_name: str = "small"
    epochs: int = field(default=300, metadata=help_meta("training epochs on a proxy set"))
    truth_epochs: int = field(default=30, metadata=help_meta("epochs on the whole data"))
    early_epochs: int = field(default=1, metadata=help_meta("the early-stop proxy's epochs"))
    seeds: tuple[int, ...] = field(default=(0,), metadata=help_meta("one model per architecture × seed"))
    ipc: int = field(default=10, metadata=help_meta("random proxy's images per class without a set folder"))
    dsa: str = field(default=DSA_DEFAULT, metadata=help_meta("augmentation, or none"))
    zca: bool = field(default=False, metadata=help_meta("whole data, random and early stop ZCA-whitened"))
    device: str = field(default="auto", metadata=help_meta("auto (CUDA where there is one) | cpu | cuda"))
    data_root: str | None = field(
        default=None, compare=False, metadata=help_meta("folder holding the datasets (or $ATOMDD_DATA)")
    )

    def __post_init__(self) -> None:
        refuse("search setting(s)", self.problems())

    def problems(self) -> list[str]:
        bad = []
        if not self.dataset:
            bad.append("a dataset is needed (--dataset NAME, or dataset in --config)")
        if not self.proxies:
            bad.append("at least one proxy is needed (--proxies random early-stop SET_FOLDER …)")
        if not self.space:
            bad.append("the search space holds no architecture")
        if epochs := [
            f"{k}={getattr(self, k)}"
            for k in ("epochs", "truth_epochs", "early_epochs")
            if getattr(self, k) < 1
        ]:
            bad.append(f"{', '.join(epochs)}: every epoch count must be at least 1")
        if not self.seeds:
            bad.append("at least one seed is needed")
        if self.ipc < 1:
            bad.append(f"ipc={self.ipc}: at least 1 image per class")
        if problem := dsa_problem(self.dsa):
            bad.append(problem)
        return bad

    def labels(self) -> list[str]:
        return [self.label(p) for p in self.proxies] + [TRUTH]

    def label(self, proxy: str) -> str:
        return proxy if proxy in (RANDOM, EARLY) else Path(proxy).resolve().name

    def budget(self, proxy: str) -> dict[str, Any]:
        """The training of a proxy's jobs (a set folder's label: the proxy epochs)."""
        epochs = self.truth_epochs if proxy == TRUTH else self.early_epochs if proxy == EARLY else self.epochs
        return {"epochs": epochs, "dsa": self.dsa, "zca": self.zca}


@dataclass(frozen=True, order=True)
class Job:
    arch: str
    proxy: str  # a label of NasSettings, or TRUTH
    seed: int


def jobs(settings: NasSettings, archs: Sequence[str]) -> list[Job]:
    """Every (architecture, proxy, seed) of the search, the truth's too; the same list on every rank."""
    return [Job(a, p, s) for s in settings.seeds for a in archs for p in settings.labels()]


class Context:
    """What jobs read, loaded once per process: the dataset, its preprocessing, the proxy sets."""

    def __init__(self, settings: NasSettings) -> None:
        from atomdd.data import as_dataset
        from atomdd.evaluate import check_set
        from atomdd.sets import load_synthetic

        labels = settings.labels()
        if len(set(labels)) < len(labels):
            raise AtomddError(f"proxies need distinct names (a set folder's is its own): {labels[:-1]}")
        self.settings = settings
        self.data = as_dataset(settings.dataset, settings.data_root)
        self.sets = {}
        for proxy in settings.proxies:
            if proxy in (RANDOM, EARLY):
                continue
            if not Path(proxy).is_dir():
                raise AtomddError(f"proxy {proxy!r}: not a set folder, nor 'random' or 'early-stop'")
            syn = load_synthetic(proxy)
            if syn.dataset != self.data.name:
                raise AtomddError(f"proxy {proxy} is a set of {syn.dataset!r}, not of {self.data.name!r}")
            check_set(syn, self.data)
            self.sets[settings.label(proxy)] = (syn, syn.preprocess()(self.data.test_images))
        self._whole = self._test = None
        self._random: dict[int, tuple] = {}

    def images_stored(self, proxy: str) -> int:
        if proxy in self.sets:
            return len(self.sets[proxy][0].labels)
        if proxy == RANDOM:
            return self.random_ipc() * self.data.num_classes
        return len(self.data.train_labels)

    def random_ipc(self) -> int:
        return next(iter(self.sets.values()))[0].ipc if self.sets else self.settings.ipc

    def train_test(self, proxy: str, seed: int):
        """(train images, labels), (test images, labels) of a proxy, all in its model space."""
        import torch

        from atomdd.coreset import select

        if proxy in self.sets:
            syn, test = self.sets[proxy]  # tested in the set's own preprocessing
            return syn.decoded(), (test, self.data.test_labels)
        if self._whole is None:  # prepared on first use (a ZCA fit on CIFAR-10 takes a minute)
            prep = self.data.preprocess(self.settings.zca)
            self._whole = (prep(self.data.train_images), self.data.train_labels)
            self._test = (prep(self.data.test_images), self.data.test_labels)
        if proxy == RANDOM and seed not in self._random:  # coreset's choice, in the prepared space
            idx = torch.tensor(select(self.data, self.random_ipc(), "random", seed=seed).meta["indices"])
            self._random[seed] = (self._whole[0][idx], self.data.train_labels[idx])
        if proxy == RANDOM:
            return self._random[seed], self._test
        return self._whole, self._test


def run_job(ctx: Context, job: Job) -> dict[str, Any]:
    """Train and test one fresh model: the job's result, one line of results.jsonl."""
    from atomdd.settings import TrainConfig
    from atomdd.train import test_models, train_models

    s = ctx.settings
    epochs, seed = s.budget(job.proxy)["epochs"], derive_seed("nas", job.seed, job.arch)
    cfg = TrainConfig(epochs=epochs, repeats=1, dsa=s.dsa, device=s.device, seed=seed)
    (x, y), (tx, ty) = ctx.train_test(job.proxy, job.seed)  # prepared once per process, not timed
    start = time.perf_counter()
    models = train_models(job.arch, x, y, ctx.data.num_classes, cfg)
    (acc,) = test_models(models, tx, ty, cfg)
    return asdict(job) | {"accuracy": acc, "seconds": time.perf_counter() - start, "images": len(y)}


_CTX: Context | None = None


def _init_worker(settings: NasSettings | Context, threads: int = 0) -> None:
    """A worker's context (loaded once), or the calling process's own."""
    global _CTX
    if threads:
        import torch

        torch.set_num_threads(threads)
    _CTX = settings if isinstance(settings, Context) else Context(settings)


def _run_in_worker(job: Job) -> dict[str, Any]:
    assert _CTX is not None
    return run_job(_CTX, job)


def truth_file(settings: NasSettings, truth_dir: Path, data_hash: str) -> Path:
    """The truth's JSONL, keyed by dataset × space × budget (its name holds a hash of the three)."""
    key = [settings.dataset, data_hash, list(settings.space), settings.budget(TRUTH)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return truth_dir / f"{settings.dataset}-{settings.space_name}-e{settings.truth_epochs}-{digest}.jsonl"


def _check_folder(out: Path, settings: NasSettings) -> None:
    """Make or reuse `out`; a folder made with other settings (seeds aside: a result line names its
    seed) is refused, as its results would mix."""
    mine, path = json.loads(json.dumps(asdict(replace(settings, data_root=None)))), out / NAS_SETTINGS
    theirs = json.loads(path.read_text()) if path.exists() else mine
    diff = sorted(k for k in mine if k != "seeds" and mine[k] != theirs.get(k))
    if diff:
        raise AtomddError(
            f"{out} holds a search made with other settings ({', '.join(diff)}); use another --out"
        )
    if is_main_process():
        write_json(path, mine)


def run_search(
    settings: NasSettings,
    out: str | os.PathLike,
    workers: int = 1,
    truth_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the jobs not yet in `out` (over `workers` processes, each torchrun rank its `shard`),
    then write and return the summary (nas.json) and its scatter plot (nas.png)."""
    if workers < 1:
        raise AtomddError(f"workers={workers}: at least 1 worker process")
    parallel.init(settings.device)  # joins torchrun's group, if it started this process
    truth = Path(truth_dir) if truth_dir is not None else Path(out) / NAS_TRUTH
    # made, and one search's at a time, before the data is read; the whole-data cache too, which
    # searches with other --out may share (--truth-dir)
    with hold(out), hold(truth):
        return _search(settings, Path(out), workers, truth, log)


def _search(
    settings: NasSettings,
    out: Path,
    workers: int,
    truth_dir: Path,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    from atomdd.models import ModelRef
    from atomdd.report.charts import nas_scatter

    ctx = Context(settings)
    archs, skipped = [], []
    for text in settings.space:
        why = unbuildable(ModelRef.parse(text), ctx.data.channels, ctx.data.image_size[0])
        (skipped.append({"arch": text, "reason": why}) if why else archs.append(text))
    _check_folder(out, settings)
    truth_path = truth_file(settings, truth_dir, ctx.data.content_hash)
    files = {True: truth_path, False: out / NAS_RESULTS}
    old = [r for f in files.values() if f.exists() for r in read_jsonl(f, RESULT_ROW)]
    done = {(r["arch"], r["proxy"], r["seed"]) for r in old}
    todo = [j for j in jobs(settings, archs) if (j.arch, j.proxy, j.seed) not in done]
    if log:
        log(f"{len(todo)} of {len(jobs(settings, archs))} jobs to run ({len(skipped)} architectures skipped)")

    def record(result: dict[str, Any]) -> None:
        if is_main_process():
            append_jsonl(files[result["proxy"] == TRUTH], result)
        if log:
            log(f"{result['proxy']:>12} seed {result['seed']} {result['arch']}: {result['accuracy']:.2f} %")

    init = (settings, max(1, (os.cpu_count() or 1) // workers)) if workers > 1 else (ctx,)
    new = []
    with peers.reporting_failures():
        for result in map_local(_run_in_worker, parallel.shard(todo), workers, _init_worker, init):
            new.append(result)
            record(result)  # the main process writes its own results at once
    if parallel.world_size() > 1:  # and the other ranks' once gathered
        parts = parallel.gather_results(new, "the search's jobs")
        new = [r for part in parts for r in part]
        for r in new[len(parts[0]) :] if is_main_process() else []:
            append_jsonl(files[r["proxy"] == TRUTH], r)
    rows = [r for r in old + new if r["arch"] in archs and r["seed"] in settings.seeds]
    summary = summarize(rows, settings, {p: ctx.images_stored(p) for p in settings.labels()}, skipped)
    if is_main_process():
        write_json(out / NAS_SUMMARY, summary)
        nas_scatter(summary, out / NAS_PLOT)
    return summary


# a rank correlation over fewer architectures says nothing (two are ±1 whatever the proxy)
MIN_RANKED = 5


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # nan (a constant ranking) is null in JSON


def summarize(
    rows: Sequence[dict[str, Any]], settings: NasSettings, images: dict[str, int], skipped: list[dict]
) -> dict[str, Any]:
    """The summary of a search from its result lines: per proxy, the mean accuracy of each
    architecture over the seeds, the rank correlations with the truth (whole space, top 20 % by
    truth), the true accuracy of the architecture it ranks first, the training time and images."""
    acc: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    for r in sorted(rows, key=lambda r: (r["proxy"], r["arch"], r["seed"])):
        acc.setdefault(r["proxy"], {}).setdefault(r["arch"], []).append(r["accuracy"])
        seconds[r["proxy"]] = seconds.get(r["proxy"], 0.0) + r["seconds"]
    truth = {a: float(np.mean(v)) for a, v in acc.get(TRUTH, {}).items()}
    ranked = sorted(truth, key=lambda a: -truth[a])
    top = set(ranked[: max(2, math.ceil(0.2 * len(ranked)))])
    proxies: dict[str, Any] = {}
    for label in settings.labels():
        mean = {a: float(np.mean(v)) for a, v in acc.get(label, {}).items()}
        both = [a for a in sorted(mean) if a in truth]
        best = max(both, key=lambda a: (mean[a], a), default=None)
        entry: dict[str, Any] = {
            "images": images.get(label),
            "minutes": seconds.get(label, 0.0) / 60,
            "architectures": len(both),
            "best": best,
            "best_true_accuracy": truth[best] if best else None,
        }
        for name, cut in (("all", both), ("top20", [a for a in both if a in top])):
            p, t = [mean[a] for a in cut], [truth[a] for a in cut]
            enough = len(cut) >= MIN_RANKED  # two or three points are ranked alike by chance: ±1
            entry[f"spearman_{name}"] = _finite(spearman(p, t)) if enough else None
            entry[f"kendall_{name}"] = _finite(kendall(p, t)) if enough else None
        entry["accuracy"] = mean
        proxies[label] = entry
    return {
        "settings": asdict(replace(settings, data_root=None)),
        "proxies": proxies,
        "skipped": skipped,
        "top20": sorted(top),
    }
