import pytest

from atomdd.cli import main


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_prints_the_table(tmp_path, capsys, monkeypatch):
    from atomdd import demo

    calls = {}
    real = demo.run_demo

    def small(out, iterations, quiet):
        calls["args"] = (out, iterations, quiet)
        return real(out=out, iterations=iterations, ipc=2, repeats=2, epochs=2, quiet=quiet)

    monkeypatch.setattr(demo, "run_demo", small)
    assert main(["demo", "--out", str(tmp_path), "--iterations", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| random real images |" in out and "| ATOM |" in out
    for f in ("atom/grid.png", "atom/eval.json", "random/eval.json", "atom/synthetic.safetensors"):
        assert (tmp_path / f).exists(), f
