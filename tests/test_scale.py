"""Distillation sharded by class over 2 gloo processes on the CPU (started as torchrun would):
equal to one process, each rank computing and holding only its classes, resumable on another
number of ranks, and a failing rank ending the job with an error that names it."""

import json

import pytest
import torch
from ranks import launch
from safetensors.torch import load_file

from atomdd.folders.layout import CHECKPOINT, NAS_RESULTS, NAS_SUMMARY

# ZCA on, so the fit-once-and-broadcast path is part of the equality; checkpoints every 2 steps.
CONFIG = dict(width=16, batch_real=16, checkpoint_every=2, log_every=1, zca=True)


def run(tmp, name, world, iterations, resume=False, out=None, fail=None, timeout=30, stop=None, more=None):
    out = out or tmp / name / "run"
    job = {
        "kind": "distill",
        "config": CONFIG | {"iterations": iterations} | (more or {}),
        "out": str(out),
        "resume": resume,
    }
    if fail:
        job["fail"] = fail
    if stop:
        job["stop"] = stop
    results, seconds = launch(world, job, tmp / name / "reports", collective_timeout=timeout)
    return out, results, seconds


def ok(results):
    for r, (rc, err, _) in enumerate(results):
        assert rc == 0, f"rank {r} exited {rc}:\n{err[-3000:]}"
    return [report for _, _, report in results]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The 1-process run of 4 steps every sharded run is compared with."""
    tmp = tmp_path_factory.mktemp("single")
    out, results, _ = run(tmp, "one", 1, 4)
    ok(results)
    return out


def same_run(out, reference):
    """Bitwise the same set and checkpoint (pixels and momentum); the logged loss to 1e-6."""
    for name in ("synthetic.safetensors", CHECKPOINT):
        mine, ref = load_file(out / name), load_file(reference / name)
        for key in ("images", "labels", "syn", "momentum"):
            if key in ref:
                assert torch.equal(mine[key], ref[key]), f"{name}: {key} differs"
    # the loss is summed in another order (per rank, then across ranks): float32 rounding only
    assert losses(out) == pytest.approx(losses(reference), rel=1e-6)


def test_two_ranks_equal_one_process_and_each_computes_only_its_classes(tmp_path, single):
    out, results, _ = run(tmp_path, "two", 2, 4)
    reports = ok(results)
    same_run(out, single)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done"
    assert record["ranks"]["world_size"] == 2 and record["ranks"]["classes"] == [[0, 5], [5, 10]]
    labels = torch.tensor(reports[0]["labels"])  # the whole set, on every rank
    real_per_class = torch.bincount(load_file(single / "synthetic.safetensors")["labels"])
    assert real_per_class.tolist() == [2] * 10 and len(labels) == 20
    for r, report in enumerate(reports):
        assert report["own"] == record["ranks"]["classes"][r]
        assert report["computed"] == list(range(*report["own"]))  # the classes its forward passes took
        assert report["pixels"] == 5 * 2  # synthetic images of its own 5 classes at IPC 2, no more
        assert record["ranks"]["held"][r]["real_images"] == report["real_images"]
        assert report["set"] == reports[0]["set"]  # every rank returns the same whole set
    from atomdd.data import load_dataset

    counts = torch.bincount(load_dataset("digits").train_labels)
    assert [rep["real_images"] for rep in reports] == [int(counts[:5].sum()), int(counts[5:].sum())]


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_resume_on_another_number_of_ranks(tmp_path, single, first, then):
    out, results, _ = run(tmp_path, "a", first, 2)
    ok(results)
    out, results, _ = run(tmp_path, "b", then, 4, resume=True, out=out)
    ok(results)
    same_run(out, single)
    assert json.loads((out / "run.json").read_text())["ranks"]["world_size"] == then


@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_a_failing_rank_ends_the_job_with_an_error_naming_it(tmp_path, how):
    """Rank 1 raises, is killed, or hangs (past a 5 s collective timeout) at step 3: rank 0 ends
    with an error naming rank 1, well within 60 s, its run.json says so and the checkpoint stays."""
    fail = {"rank": 1, "step": 3, "how": how, "seconds": 20}
    out, results, seconds = run(tmp_path, how, 2, 6, fail=fail, timeout=5)
    (rc0, err0, _), (rc1, err1, _) = results
    assert rc0 == 2, err0[-3000:]
    assert rc1 != 0
    assert "rank 0 stopped at step 3's loss all-reduce" in err0
    if how == "raise":
        assert "rank 1 failed: RuntimeError: injected failure at step 3" in err0
    else:
        assert "rank 1 left no error and does not answer" in err0
    assert seconds < 60
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "rank 1" in record["error"]
    assert load_file(out / CHECKPOINT)  # the step-2 checkpoint is kept: resume from it


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory):
    from atomdd import distill

    out = tmp_path_factory.mktemp("set")
    distill("digits", 1, iterations=2, width=16, batch_real=16, out=out)
    return out


def test_sharded_evaluation_returns_the_same_accuracies(tmp_path, digits_set):
    job = {
        "kind": "evaluate",
        "set": str(digits_set),
        "models": ["convnet(width=16)", "mlp"],
        "config": {"epochs": 3, "repeats": 3, "batch_size": 16, "device": "cpu", "test_limit": 100},
    }
    one = ok(launch(1, job | {"out": str(tmp_path / "one")}, tmp_path / "r1")[0])[0]
    results, _ = launch(2, job | {"out": str(tmp_path / "two")}, tmp_path / "r2")
    two = ok(results)
    jobs = [[m, r] for m in ("convnet(width=16)", "mlp") for r in range(3)]
    assert [rep["trained"] for rep in two] == [jobs[0::2], jobs[1::2]]  # each rank its share, no more
    for rep in two:
        for model, mine in rep["models"].items():
            ref = one["models"][model]
            assert (mine["runs"], mine["first"]["runs"]) == (ref["runs"], ref["first"]["runs"])
    saved = json.loads((tmp_path / "two" / "eval.json").read_text())["models"]
    assert {m: r["runs"] for m, r in saved.items()} == {m: r["runs"] for m, r in one["models"].items()}
    rows = (tmp_path / "two" / "eval.jsonl").read_text().splitlines()
    assert sorted((json.loads(x)["model"], json.loads(x)["run"]) for x in rows) == sorted(map(tuple, jobs))


def test_a_rank_slower_than_the_collective_timeout_is_waited_for(tmp_path, digits_set):
    """Ranks end their shares of jobs minutes apart at scale: rank 1 trains 8 s longer than the 3 s
    collective timeout, and the evaluation still completes, with every run."""
    job = {
        "kind": "evaluate",
        "set": str(digits_set),
        "models": ["mlp"],
        "config": {"epochs": 1, "repeats": 2, "batch_size": 16, "device": "cpu", "test_limit": 50},
        "slow": {"rank": 1, "seconds": 8},
        "out": str(tmp_path / "out"),
    }
    results, seconds = launch(2, job, tmp_path / "r", collective_timeout=3)
    two = ok(results)
    assert seconds > 8 and two[0]["models"]["mlp"]["runs"] == two[1]["models"]["mlp"]["runs"]
    assert len(two[0]["models"]["mlp"]["runs"]) == 2


def test_a_rank_killed_during_its_jobs_ends_the_wait_naming_it(tmp_path, digits_set):
    job = {
        "kind": "evaluate",
        "set": str(digits_set),
        "models": ["mlp"],
        "config": {"epochs": 1, "repeats": 2, "batch_size": 16, "device": "cpu"},
        "slow": {"rank": 1, "kill": True},
    }
    (rc0, err0, _), (rc1, _, _) = launch(2, job, tmp_path / "r", collective_timeout=5)[0]
    assert rc1 == -9 and rc0 != 0
    assert (
        "rank 0 stopped at the end of the evaluation's (model, repeat) jobs: rank 1 has not answered" in err0
    )


def test_sharded_search_equals_one_process(tmp_path):

    (tmp_path / "space.txt").write_text("convnet(depth=1,width=8)\nconvnet(depth=2,width=8)\n")
    config = {"epochs": 2, "truth_epochs": 1, "dsa": "none", "seeds": [0, 1]}
    job = {"kind": "nas", "space": str(tmp_path / "space.txt"), "config": config}
    one = ok(launch(1, job | {"out": str(tmp_path / "one")}, tmp_path / "r1")[0])[0]
    two = ok(launch(2, job | {"out": str(tmp_path / "two")}, tmp_path / "r2")[0])
    assert [rep["trained"] for rep in two] == [6, 6] and one["trained"] == 12  # 2 archs × 3 proxies × 2 seeds

    def timeless(report):
        return {p: {k: v for k, v in e.items() if k != "minutes"} for p, e in report["proxies"].items()}

    assert timeless(two[0]["report"]) == timeless(two[1]["report"]) == timeless(one["report"])
    saved = json.loads((tmp_path / "two" / NAS_SUMMARY).read_text())
    assert timeless(saved) == timeless(one["report"])
    lines = (tmp_path / "two" / NAS_RESULTS).read_text().splitlines()
    assert len(lines) == 8  # the proxies' 8 jobs, each once (the truth's 4 go to the truth's file)


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_sharded_coreset_equals_one_process(tmp_path, method):
    job = {"kind": "coreset", "ipc": 3, "method": method, "config": {"embed": "trained", "embed_epochs": 1}}
    one = ok(launch(1, job, tmp_path / "r1")[0])[0]
    two = ok(launch(2, job, tmp_path / "r2")[0])
    assert two[0]["indices"] == two[1]["indices"] == one["indices"]
    assert len(one["embedded"]) == 10 and [len(rep["embedded"]) for rep in two] == [5, 5]  # classes each


def test_the_cli_under_torchrun(tmp_path):
    """`torchrun -m atomdd distill|evaluate`: one set, one process writing, one rank printing."""
    import os
    import subprocess
    import sys

    env = os.environ | {"OMP_NUM_THREADS": "1", "ATOMDD_TIMEOUT": "30"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    distill = [
        "distill",
        "--ipc",
        "1",
        "--iterations",
        "3",
        "--model",
        "convnet(width=16)",
        "--batch-real",
        "16",
    ]
    out = subprocess.run(
        [*torchrun, "-m", "atomdd", *distill, "--out", str(tmp_path / "set"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "set" / "run.json").read_text())["ranks"]["classes"] == [[0, 5], [5, 10]]
    evaluate = ["evaluate", str(tmp_path / "set"), "--epochs", "2", "--repeats", "2", "--device", "cpu"]
    out = subprocess.run(
        [*torchrun, "-m", "atomdd", *evaluate], env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("| convnet |") == 1  # the table once, from rank 0
    assert len(json.loads((tmp_path / "set" / "eval.json").read_text())["models"]["convnet"]["runs"]) == 2


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    out, results, seconds = run(tmp_path, "nan", 2, 6, fail={"rank": 1, "step": 3, "how": "nan"})
    for rc, err, _ in results:  # both see the summed loss, so both stop there, neither waits
        assert rc == 2 and "the loss became nan at step 3" in err, err[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_a_stop_on_one_rank_stops_every_rank_at_the_same_step_and_resumes(tmp_path, single):
    """Rank 1 alone is asked to stop (a SIGTERM) during step 2: both ranks checkpoint after it and
    end with status 143; one process resumes and ends where the single process did."""
    out, results, _ = run(tmp_path, "stop", 2, 4, stop={"rank": 1, "step": 2})
    for rc, err, _ in results:
        assert rc == 143 and "interrupted at step 3" in err, err[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["step"] == 3
    out, results, _ = run(tmp_path, "resume", 1, 4, resume=True, out=out)
    ok(results)
    same_run(out, single)


def test_the_pool_pick_of_a_step_is_the_same_on_every_rank_and_after_a_resume(tmp_path):
    """With a pool, its interpolation and factor images: 2 ranks (2 steps, then resumed to 4) make
    the 1-process set bit for bit, and every rank drew the same (member, snapshot, l) at every step."""
    from atomdd.pool import build
    from atomdd.settings import PoolSettings

    pool, _ = build(
        PoolSettings("digits", "convnet(width=16)", zca=True, members=2, epochs=2, snapshot_every=1),
        tmp_path / "pool",
    )
    more = {"pool_dir": str(pool), "pool_interp": True, "factor": 2}
    reference, results, _ = run(tmp_path, "one", 1, 4, more=more)
    (single,) = ok(results)
    out, results, _ = run(tmp_path, "two", 2, 2, more=more)
    first = ok(results)
    out, results, _ = run(tmp_path, "two", 2, 4, resume=True, out=out, more=more)
    then = ok(results)
    same_run(out, reference)
    picks = {int(k): v for k, v in single["picks"].items()}
    assert sorted(picks) == [0, 1, 2, 3] and len({tuple(p[:2]) for p in picks.values()}) > 1
    for report in (*first, *then):  # each rank's steps: the same picks as the single process's
        assert report["picks"] and all(picks[int(k)] == v for k, v in report["picks"].items())
