import pytest

from atomdd.cli import main


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_prints_the_table(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--iterations", "2", "--repeats", "2", "--epochs", "2", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| random real images |" in out and "| ATOM |" in out
    assert "ATOM − random:" in out and "of 2 models" in out and "demo:" in out and "--full" in out
    assert "digits, 1 images per class, 2 distillation steps, 2 models × 2 epochs" in out
    for f in ("atom/grid.png", "atom/eval.json", "random/eval.json", "atom/synthetic.safetensors"):
        assert (tmp_path / f).exists(), f


def test_the_demo_budgets_are_in_its_help(capsys):
    """The quick demo (what `atomdd demo` runs: one image per class) and the fuller one behind
    --full, each as --help states it; --iterations, --repeats, --epochs change either."""
    from atomdd.demo import DEMO, DEMO_FULL

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert DEMO.ipc == 1 and DEMO_FULL.ipc == 10 and DEMO_FULL.iterations == 200
    assert f"(demo: {DEMO.iterations}; --full: {DEMO_FULL.iterations})" in text
    assert f"(demo: {DEMO.repeats}; --full: {DEMO_FULL.repeats})" in text
    assert DEMO_FULL.describe() in text
