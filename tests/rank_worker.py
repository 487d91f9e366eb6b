"""One rank of a multi-process test (started by `ranks.launch`): runs `job` and writes what this
rank did to a JSON report. job["kind"]: "distill" (config overrides, out, resume, stop), with optional
"fail": {"rank", "step", "how": "raise" | "kill" | "hang" | "nan", "seconds"}; "evaluate" (set, models,
config, out); "nas" (space file, config, out); "coreset" (ipc, method, config)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch

from atomdd import parallel
from atomdd.distillation import step as steps
from atomdd.distillation.config import make_config
from atomdd.distillation.driver import Distiller
from atomdd.errors import AtomddError, Interrupted


def distill(job: dict) -> dict:
    computed: set[int] = set()
    chunks = steps.Task.class_chunks

    def recording(task, classes=None):  # every class this rank's steps put through the network
        out = chunks(task, classes)
        computed.update(c for chunk in out for c in chunk)
        return out

    steps.Task.class_chunks = recording
    picks: dict[int, list] = {}  # with a pool: the (member, snapshot, l) of each step this rank took
    pool_pick = steps.pool_pick

    def picking(seed, step, pool):
        picks[step] = list(pool_pick(seed, step, pool))
        return pool_pick(seed, step, pool)

    steps.pool_pick = picking
    fail = job.get("fail")
    if fail and fail["rank"] == int(os.environ.get("RANK", "0")):
        loss_and_grad = steps.loss_and_grad

        def failing(task, syn, step, classes=None):
            if step == fail["step"]:
                if fail["how"] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if fail["how"] == "nan":  # this rank's loss only: every rank must stop on the sum
                    loss, terms = loss_and_grad(task, syn, step, classes)
                    return loss * float("nan"), terms
                if fail["how"] == "hang":  # past the others' collective timeout, then carry on
                    time.sleep(fail["seconds"])
                    return loss_and_grad(task, syn, step, classes)
                raise RuntimeError(f"injected failure at step {step}")
            return loss_and_grad(task, syn, step, classes)

        steps.loss_and_grad = failing
    cfg = make_config("digits", job.get("ipc", 2), job.get("method", "atom"), **job["config"])
    d = Distiller(cfg)
    stop = job.get("stop")  # {"rank", "step"}: as if that rank alone got SIGTERM during that step

    class Stop:
        signum = signal.SIGTERM

        def __bool__(self) -> bool:
            return bool(stop) and stop["rank"] == parallel.rank() and d.steps_done >= stop["step"]

    result = d.run(job.get("out"), resume=job.get("resume", False), stop=Stop())
    return {
        "rank": parallel.rank(),
        "world": parallel.world_size(),
        "own": [d.task.own.start, d.task.own.stop],
        "computed": sorted(computed),
        "real_images": len(d.task.real),
        "pixels": len(d.syn),
        "set": result.images.flatten().tolist(),
        "labels": result.labels.tolist(),
        "picks": {step: pick for step, pick in picks.items() if step < d.steps_done},
    }


def evaluate(job: dict) -> dict:
    from atomdd.evaluate import evaluate_set
    from atomdd.sets import load_synthetic
    from atomdd.settings import EvalConfig

    trained: list[tuple[str, int]] = []
    from atomdd import evaluate

    train_repeats = evaluate.train_repeats

    # {"rank", "seconds", "kill", "kill_after"}: that rank's training takes longer, or it dies at
    # once, or once it has finished `kill_after` repeats
    slow = job.get("slow")

    def recording(ref, todo, *args, **kwargs):  # the (model, repeat) jobs this rank trained
        trained.extend((str(ref), r) for r in todo)
        if slow and slow["rank"] == parallel.rank():
            if slow.get("kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            if "kill_after" in slow:
                for n, row in enumerate(train_repeats(ref, todo, *args, **kwargs)):
                    if n == slow["kill_after"]:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield row
                return
            time.sleep(slow["seconds"])
        yield from train_repeats(ref, todo, *args, **kwargs)

    evaluate.train_repeats = recording
    report = evaluate_set(
        load_synthetic(job["set"]), job["models"], EvalConfig(**job["config"]), out_dir=job.get("out")
    )
    return {"rank": parallel.rank(), "trained": trained, "models": report["models"]}


def nas(job: dict) -> dict:
    from atomdd import nas as search
    from atomdd import train

    trained: list[str] = []
    train_models = train.train_models

    def recording(arch, *args, **kwargs):  # the architectures this rank trained
        trained.append(str(arch))
        return train_models(arch, *args, **kwargs)

    train.train_models = recording
    space = tuple(map(str, search.search_space(job["space"])))
    settings = search.NasSettings("digits", ("random", "early-stop"), space, "two", **job["config"])
    report = search.run_search(settings, job["out"])
    return {"rank": parallel.rank(), "trained": len(trained), "report": report}


def coreset(job: dict) -> dict:
    from atomdd.coreset import select

    embedded: list[int] = []
    from atomdd import coreset as cs

    embed_images = cs.embed_images

    def recording(model, images, *args, **kwargs):  # how many images this rank embedded
        embedded.append(len(images))
        return embed_images(model, images, *args, **kwargs)

    cs.embed_images = recording
    result = select("digits", job["ipc"], job["method"], **job.get("config", {}))
    return {"rank": parallel.rank(), "embedded": embedded, "indices": result.meta["indices"]}


def main() -> int:
    torch.set_num_threads(1)
    job, report = json.loads(sys.argv[1]), sys.argv[2]
    try:
        out = {"distill": distill, "evaluate": evaluate, "nas": nas, "coreset": coreset}[job["kind"]](job)
    except Interrupted as e:
        print(f"atomdd: error: {e}", file=sys.stderr)
        return 128 + e.signum
    except AtomddError as e:
        print(f"atomdd: error: {e}", file=sys.stderr)
        return 2
    with open(report, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
