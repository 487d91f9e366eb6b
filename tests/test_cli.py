import argparse
import json
import subprocess
import sys

import pytest

from atomdd.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_every_registered_model(capsys):
    from atomdd.models import MODELS

    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in MODELS:
        assert name in out
    assert "norm='instancenorm'" in out


def test_datasets_lists_and_describes(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "datasets", "--data-root", str(tmp_path))
    assert code == 0 and "digits" in out and "cifar10" in out and "tinyimagenet" in out
    code, out, _ = run_cli(capsys, "datasets", "digits")
    info = json.loads(out)
    assert code == 0 and info["found"] and info["classes"] == 10 and info["train"] + info["test"] == 1797


@pytest.mark.parametrize(
    "argv, message",
    [
        (["datasets", "imagenet"], "valid datasets"),
        (["distill", "--dataset", "nope", "--out", "{tmp}/x"], "valid datasets"),
        (["distill", "--model", "resnet99", "--out", "{tmp}/x"], "valid models"),
        (["distill", "--method", "mtt", "--out", "{tmp}/x"], "valid methods"),
        (["distill", "--ipc", "0", "--out", "{tmp}/x"], "ipc must be"),
        (["distill", "--lr-img", "fast", "--out", "{tmp}/x"], "lr_img='fast': expected float"),
        (["distill", "--dataset", "mnist", "--data-root", "{tmp}", "--out", "{tmp}/x"], "MNIST"),
        (["distill", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/x"], "config file not found"),
        (["distill", "--resume", "--out", "{tmp}/x"], "no checkpoint"),
        (
            ["distill", "--method", "dm-plus", "--data-root", "{tmp}", "--out", "{tmp}/x"],
            "atomdd pool --dataset",
        ),
        (["distill", "--calib", "1", "--out", "{tmp}/x"], "calib=1.0 needs a pool"),
        (["distill", "--factor", "3", "--out", "{tmp}/x"], "factor=3 does not divide"),
        (["pool", "--dataset", "digits", "--members", "0", "--out", "{tmp}/p"], "members=0 (at least 1)"),
        (["evaluate", "--whole", "--dataset", "digits", "--cutmix", "2"], "cutmix=2.0 (a probability"),
        (["evaluate", "--whole", "--dataset", "digits", "--teacher", "{tmp}"], "no pool in"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert message in err and "Traceback" not in err


def test_pool_builds_a_pool_a_run_then_uses(capsys, tmp_path):
    argv = ["pool", "--dataset", "digits", "--model", "convnet(width=8)", "--members", "1", "--epochs", "1"]
    code, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "pool"), "--quiet")
    assert code == 0 and f"pool of 1 convnet(width=8) networks in {tmp_path / 'pool'}" in out
    code, out, err = run_cli(
        capsys, "distill", "--dataset", "digits", "--ipc", "1", "--method", "dm", "--model", "convnet(width=8)",
        "--iterations", "1", "--pool-dir", str(tmp_path / "pool"), "--pool-interp", "--calib", "1",
        "--factor", "2", "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["factor"] == 2


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "atomdd.cli", "distill", "--dataset", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown dataset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_distill_from_the_cli_writes_a_run(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, _ = run_cli(
        capsys,
        "distill",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--model",
        "convnet(width=16)",
        "--batch-real",
        "8",
        "--p-spatial",
        "2",
        "--no-fused",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    config = run["config"]  # the sections nest: match (the loss), run (execution)
    assert config["match"]["p_spatial"] == 2.0 and config["run"]["fused"] is False and run["step"] == 2
    assert config["model"] == "convnet(width=16)"


def test_truncated_file_is_named_with_exit_code_2(capsys, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).write_bytes(
            b"\0\0\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 10
        )
    code, _, err = run_cli(capsys, "datasets", "mnist", "--data-root", str(tmp_path))
    assert code == 2 and "train-images-idx3-ubyte" in err and "ends early" in err and "Traceback" not in err


def test_coreset_then_evaluate_from_the_cli(capsys, tmp_path):
    out = tmp_path / "herding"
    code, text, _ = run_cli(
        capsys, "coreset", "--dataset", "digits", "--ipc", "2", "--method", "herding", "--out", str(out)
    )
    assert code == 0 and "2 per class" in text
    code, text, _ = run_cli(
        capsys, "evaluate", str(out), "--models", "convnet,mlp", "--repeats", "2", "--epochs", "2"
    )
    assert code == 0 and "| convnet |" in text and "| mlp |" in text
    report = json.loads((out / "eval.json").read_text())
    assert set(report["models"]) == {"convnet", "mlp"} and len(report["models"]["mlp"]["runs"]) == 2
    assert report["config"]["epochs"] == 2 and isinstance(report["seconds"], float)
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "nothing-here"))
    assert code == 2 and "Traceback" not in err


def _help_of(command: str) -> str:
    from atomdd.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_flags_are_generated_from_the_settings():
    from dataclasses import fields

    from atomdd.distillation.config import flat_fields
    from atomdd.grid import GridSettings
    from atomdd.nas import NasSettings
    from atomdd.settings import CoresetConfig, EvalConfig

    for command, names in (
        ("distill", [f.name for f in flat_fields()]),
        ("evaluate", [f.name for f in fields(EvalConfig)]),
        ("coreset", [f.name for f in fields(CoresetConfig)]),
        ("nas", [f.name for f in fields(NasSettings) if not f.name.startswith("space")] + ["space"]),
        ("grid", [f.name for f in fields(GridSettings)]),
    ):
        text = _help_of(command)
        for name in names:
            assert "--" + name.replace("_", "-") in text, (command, name)


def test_every_command_takes_a_config_file_and_flags_win(capsys, tmp_path):
    from atomdd.sets import load_synthetic

    (tmp_path / "c.yaml").write_text("dataset: digits\nipc: 2\nmethod: herding\nseed: 3\n")
    argv = ["coreset", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "set"), "--seed", "1"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "herding images (2 per class)" in out
    assert load_synthetic(tmp_path / "set").meta["seed"] == 1
    (tmp_path / "e.yaml").write_text("epochs: 1\nrepeats: 1\nmodels: mlp\n")
    code, out, _ = run_cli(
        capsys, "evaluate", str(tmp_path / "set"), "--config", str(tmp_path / "e.yaml"), "--repeats", "2"
    )
    report = json.loads((tmp_path / "set" / "eval.json").read_text())
    assert code == 0 and list(report["models"]) == ["mlp"] and report["config"]["epochs"] == 1
    assert len(report["models"]["mlp"]["runs"]) == 2 and report["config"]["repeats"] == 2
    (tmp_path / "bad.yaml").write_text("epoch: 1\n")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "set"), "--config", str(tmp_path / "bad.yaml"))
    assert code == 2 and "unknown config key(s) ['epoch']; valid: epochs, repeats" in err
    code, _, err = run_cli(capsys, "coreset", "--out", str(tmp_path / "x"))
    assert code == 2 and "needs a dataset and an ipc" in err
    code, _, err = run_cli(
        capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--embed", "imagenet", "--out", "x"
    )
    assert code == 2 and "embedding network 'imagenet'" in err


def test_the_old_name_of_repeats_still_works_and_says_so(capsys, tmp_path):
    """`runs` (a config key, the flag --runs, EvalConfig(runs=…)) was renamed `repeats`: a run is a
    distillation. The old spelling keeps working, with a warning; eval.json keeps its keys."""
    from atomdd.settings import EvalConfig

    with pytest.warns(FutureWarning, match="runs is now repeats"):
        assert EvalConfig(runs=3).repeats == 3
    code, _, _ = run_cli(capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "s"))
    (tmp_path / "old.yaml").write_text("epochs: 1\nruns: 1\nmodels: mlp\n")
    with pytest.warns(FutureWarning, match="runs is now repeats"):
        code, _, err = run_cli(
            capsys, "evaluate", str(tmp_path / "s"), "--config", str(tmp_path / "old.yaml")
        )
    assert (
        code == 0
        and len(json.loads((tmp_path / "s" / "eval.json").read_text())["models"]["mlp"]["runs"]) == 1
    )
    code, _, err = run_cli(
        capsys, "evaluate", str(tmp_path / "s"), "--models", "mlp", "--epochs", "1", "--runs", "2"
    )
    assert code == 0 and "--runs is now --repeats; the old name still works" in err
    assert len(json.loads((tmp_path / "s" / "eval.json").read_text())["models"]["mlp"]["runs"]) == 2
