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
    code, out, _ = run_cli(capsys, *argv, "--print-config")
    assert code == 0 and "members: 1" in out and "snapshot_every: 2" in out
    assert not (tmp_path / "pool").exists()
    code, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "pool"), "--quiet")
    assert code == 0 and f"pool of 1 convnet(width=8) networks in {tmp_path / 'pool'}" in out
    run = ["distill", "--dataset", "digits", "--ipc", "1", "--method", "dm", "--model", "convnet(width=8)"]
    code, out, err = run_cli(
        capsys, *run, "--iterations", "1", "--pool-dir", str(tmp_path / "pool"), "--pool-interp",
        "--calib", "1", "--factor", "2", "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["factor"] == 2


def test_the_engine_options_are_listed_where_the_settings_are(capsys):
    """The options of issue 32 in `distill --help` (with the preset's value), `evaluate --help`,
    `pool --help`, `--print-config` and `atomdd methods` (the -plus presets and what they set)."""
    text = _help(capsys, "distill", "--method", "dm-plus")
    assert "--factor FACTOR tiles per side of each stored image" in text and "(preset: 2)" in text
    assert "--pool-interp, --no-pool-interp" in text and "--calib CALIB" in text
    assert "mean-cov | mmd | cf" in text
    text = _help(capsys, "evaluate")
    assert "--cutmix CUTMIX" in text and "--teacher TEACHER" in text and "--teacher-temperature" in text
    assert "--members MEMBERS networks in the pool (default: 3)" in _help(capsys, "pool")
    code, out, _ = run_cli(capsys, "distill", "--method", "atom-plus", "--out", "x", "--print-config")
    assert code == 0 and "factor: 2" in out and "pool_dir: default" in out and "calib: 1.0" in out
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and "dm-plus" in out and "factor=2" in out and "calib=1" in out


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


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping aside


def test_every_flag_has_help_with_the_value_it_takes_now(capsys):
    """Each settings flag says what it is and what it is now: the preset's value for the --dataset,
    --ipc and --method given with --help (issue 33: 7), the default elsewhere; the datasets and
    methods are listed."""
    text = _help(capsys, "distill", "--dataset", "cifar10", "--ipc", "1")
    assert "the preset for cifar10, IPC 1, atom" in text
    assert "--embedding EMBEDDING λ: the weight of the final embedding's term (preset: 0.01)" in text
    assert "--zca, --no-zca ZCA-whiten the images (the published CIFAR protocol) (preset: on)" in text
    assert "--iterations N distillation steps (the published tables: 8000) (default: 8000)" in text
    assert "--seed N" in text and "(default: 0)" in text
    assert "cifar10 | cifar100 | tinyimagenet | imagefolder" in text and "datadam-code | atom-code" in text
    assert "(preset: 0.1)" in " ".join(_help(capsys, "distill", "--dataset", "mnist").split())
    from atomdd.cli import build_parser
    from atomdd.flags import option_names

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help, (command, action.option_strings)
    text = _help(capsys, "evaluate")
    for flag, value in (("--epochs", "1000"), ("--repeats", "5"), ("--lr", "0.01"), ("--batch-size", "256")):
        assert f"{flag} {flag[2:].upper().replace('-', '_')} " in text and f"(default: {value})" in text
    assert option_names("lr_img") == ["--lr-img", "--lr_img"]


def test_aliases_work_and_do_not_crowd_the_help(capsys, tmp_path):
    """The underscore spelling of every flag (as pasted from the published code) and the published
    code's own names where they differ store into the same setting; --help lists neither."""
    from atomdd.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["distill", "--out", "x", "--lr_img", "10", "--batch_real", "16", "--ipc", "2"])
    assert (args.lr_img, args.batch_real, args.ipc) == ("10", "16", 2)
    args = parse(["distill", "--out", "x", "--Iteration", "7", "--data_path", "D", "--dsa_strategy", "none"])
    assert (args.iterations, args.data_root, args.dsa) == (7, "D", "none")
    args = parse(["evaluate", "s", "--num_eval", "3", "--epoch_eval_train", "9", "--batch_train", "64"])
    assert (args.repeats, args.epochs, args.batch_size) == ("3", "9", "64")
    args = parse(["grid", "--out", "g", "--num_eval", "2", "--Iteration", "5", "--test_limit", "100"])
    assert (args.repeats, args.iterations, args.test_limit) == ("2", "5", "100")
    args = parse(["distill", "--out", "x", "--zca_refit", "--resume_or_start"])
    assert args.zca_refit is True and args.resume_or_start
    for command in ("distill", "evaluate", "grid", "demo"):
        text = _help(capsys, command)
        for alias in (
            "--lr_img",
            "--data_path",
            "--Iteration",
            "--num_eval",
            "--epoch_eval_train",
            "--no-zca_",
        ):
            assert alias not in text, (command, alias)
    (tmp_path / "c.yaml").write_text("epochs: 1\n")
    code, out, _ = run_cli(capsys, "evaluate", "s", "--config", str(tmp_path / "c.yaml"), "--num_eval", "4",
                           "--print-config")  # fmt: skip
    assert code == 0 and "repeats: 4" in out and "epochs: 1" in out


def test_print_config_shows_the_resolved_settings_and_touches_no_data(capsys, tmp_path):
    """--print-config: the preset, then --config, then the flags, as a file --config reads back;
    exit 0, no data read (the data root does not exist)."""
    import yaml

    (tmp_path / "c.yaml").write_text("p_spatial: 2\niterations: 30\n")
    argv = [
        "distill",
        "--dataset",
        "cifar10",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "r"),
    ]
    code, out, _ = run_cli(
        capsys, *argv, "--config", str(tmp_path / "c.yaml"), "--iterations", "40", "--print-config"
    )
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["dataset"] == "cifar10" and cfg["zca"] is True and cfg["embedding"] == 0.01
    assert cfg["p_spatial"] == 2.0 and cfg["iterations"] == 40 and not (tmp_path / "r").exists()
    (tmp_path / "printed.yaml").write_text(out)
    code, again, _ = run_cli(capsys, "distill", "--config", str(tmp_path / "printed.yaml"), "--print-config")
    assert code == 0 and again == out  # read back as it was printed; no --out: nothing is written
    for argv in (
        ["coreset", "--dataset", "mnist", "--ipc", "3", "--method", "herding"],
        ["grid", "--methods", "dm", "atom[embedding=0.1]", "--ipc", "1"],
        ["nas", "--dataset", "digits", "--proxies", "random"],
    ):
        code, out, _ = run_cli(capsys, *argv, "--print-config")
        assert code == 0 and yaml.safe_load(out), argv
    assert (
        "atom[embedding=0.1]"
        in run_cli(capsys, "grid", "--out", "x", "--methods", "atom[embedding=0.1]", "--print-config")[1]
    )


def test_datasets_shows_the_full_shape_and_finds_only_image_folders(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "datasets", "--data-root", str(tmp_path))
    line = next(x for x in out.splitlines() if x.startswith("cifar10 "))
    assert code == 0 and "C×H×W" in out and "3×32×32" in line and "1×8×8" in out
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # other datasets' folders: no image folder
    imagefolder = next(
        x
        for x in run_cli(capsys, "datasets", "--data-root", str(tmp_path))[1].splitlines()
        if x.startswith("imagefolder")
    )
    assert imagefolder.split()[1] == "no"
    from PIL import Image

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    imagefolder = next(
        x
        for x in run_cli(capsys, "datasets", "--data-root", str(tmp_path))[1].splitlines()
        if x.startswith("imagefolder")
    )
    assert imagefolder.split()[1] == "yes"


def test_evaluate_says_what_it_reused_what_it_keeps_nowhere_and_when_training_is_short(
    capsys, caplog, tmp_path
):
    """Issue 33: 8 and 5. A rerun's table says its models were reused (not "0.0 seconds"); a peer's
    .pt evaluated without --out, and --whole without it, say at once that nothing is kept; a
    training of a few SGD steps says so."""
    run = tmp_path / "set"
    assert run_cli(capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--out", str(run))[0] == 0
    budget = ["--models", "convnet(width=8)", "--epochs", "2", "--quiet"]
    assert run_cli(capsys, "evaluate", str(run), *budget, "--repeats", "2")[0] == 0
    assert "2 epochs of 10 images at batch 256 are 2 SGD steps in all (1 an epoch)" in caplog.text
    code, out, _ = run_cli(capsys, "evaluate", str(run), *budget, "--repeats", "2")
    assert code == 0 and "| – (all 2 reused from eval.jsonl) |" in out
    code, out, _ = run_cli(capsys, "evaluate", str(run), *budget, "--repeats", "3")
    assert code == 0 and "(2 of 3 reused) |" in out
    peer = tmp_path / "peer.pt"
    assert run_cli(capsys, "export", str(run), "--format", "pt", "--out", str(peer))[0] == 0
    code, _, err = run_cli(capsys, "evaluate", str(peer), "--dataset", "digits", *budget, "--repeats", "1")
    assert code == 0 and "is kept nowhere; pass --out DIR to keep it" in err and "results in" not in err
    kept = ["--out", str(tmp_path / "kept")]
    code, _, err = run_cli(
        capsys, "evaluate", str(peer), "--dataset", "digits", *budget, "--repeats", "1", *kept
    )
    assert code == 0 and (tmp_path / "kept" / "eval.json").exists() and "kept nowhere" not in err
