"""`atomdd grid`: make or reuse a job's folder, refuse one made with other settings, tabulate with
paired differences (the report's table), resume an interrupted job; the command end to end."""

import json

import pytest
import torch

from atomdd import grid
from atomdd.cli import main
from atomdd.errors import AtomddError
from atomdd.folders.layout import GRID_SUMMARY, RUN_FILE, grid_member, safe_name

BUDGET = grid.Budget(dataset="digits", iterations=2, epochs=1, repeats=2)
SMALL = "width=16,batch_real=16"


def test_method_specs():
    assert grid.parse_method("atom") == ("atom", {})
    assert grid.parse_method("atom[p_spatial=2,p_channel=6]") == (
        "atom",
        {"p_spatial": "2", "p_channel": "6"},
    )
    assert safe_name("atom[embedding=0.01]") == "atom_embedding_0.01"
    for bad in ("atom[", "atom[p_spatial]"):
        with pytest.raises(AtomddError, match="bad method spec"):
            grid.parse_method(bad)
    with pytest.raises(AtomddError, match="bad method spec"):
        grid.GridSettings(methods=("atom[",))


@pytest.mark.slow
def test_a_grid_is_made_reused_tabulated_and_paired(tmp_path, one_thread):
    specs = ["random", f"dm[{SMALL}]", f"atom[{SMALL}]"]
    for spec in specs:
        folder = grid_member(tmp_path, spec, 1, 0)
        syn = grid.make_set(spec, 1, 0, BUDGET, folder)
        grid.evaluate_job(syn, folder, BUDGET)
    atom = grid_member(tmp_path, specs[2], 1, 0)
    stamp = (atom / RUN_FILE).stat().st_mtime_ns
    again = grid.make_set(specs[2], 1, 0, BUDGET, atom)  # finished: loaded, not made again
    assert (atom / RUN_FILE).stat().st_mtime_ns == stamp and len(again.labels) == 10
    git = json.loads((atom / RUN_FILE).read_text())["git"]  # None outside a git checkout
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
    # a folder is named by its spec: one made with other matching settings is refused
    with pytest.raises(AtomddError, match="other settings"):
        grid.make_set(f"atom[{SMALL},embedding=0.5]", 1, 0, BUDGET, atom)

    labels = [safe_name(s) for s in specs]
    settings = grid.GridSettings(**vars(BUDGET), methods=tuple(specs), ipc=(1,), against=labels[2])
    table = grid.tabulate(tmp_path, settings).splitlines()
    assert table[2] == f"| method | IPC 1 | method − {labels[2]}, IPC 1 |" and len(table) == 4 + len(specs)
    assert table[4].startswith("| random | ")  # the published order: coresets first, then by name
    (ref,) = [row for row in table if row.startswith(f"| {labels[2]} | ")]
    assert ref.endswith("| – |")  # the reference method has no difference to itself
    stats = json.loads((tmp_path / GRID_SUMMARY).read_text())["results"]
    r, ref = stats["random"]["1"], stats[labels[2]]["1"]
    assert len(r["per_seed"][0]["runs"]) == 2 and "paired" not in ref
    diffs = [a - b for a, b in zip(r["per_seed"][0]["runs"], ref["per_seed"][0]["runs"], strict=True)]
    assert r["paired"]["mean"] == pytest.approx(sum(diffs) / 2) and r["paired"]["n"] == 2
    # another budget finds nothing finished
    assert grid.by_method(tmp_path, grid.Budget(dataset="digits", iterations=2, epochs=2, repeats=2)) == {}


def test_an_interrupted_job_resumes(tmp_path):
    folder = grid_member(tmp_path, f"atom[{SMALL}]", 1, 0)
    budget = grid.Budget(dataset="digits", iterations=3)
    whole = grid.make_set(f"atom[{SMALL}]", 1, 0, budget, tmp_path / "whole")
    with pytest.raises(AtomddError, match="interrupted at step 1"):
        grid.make_set(f"atom[{SMALL}]", 1, 0, budget, folder, stop=True)
    resumed = grid.make_set(f"atom[{SMALL}]", 1, 0, budget, folder)
    assert torch.equal(whole.images, resumed.images)


@pytest.mark.slow
def test_the_command_makes_a_grid_and_tabulates_it(tmp_path, capsys, one_thread):
    argv = ["grid", "--dataset", "digits", "--methods", "random", f"dm[{SMALL}]", "--ipc", "1"]
    argv += ["--iterations", "2", "--epochs", "1", "--repeats", "2", "--against", "random"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| method | IPC 1 | method − random, IPC 1 |" in out and f"| {safe_name(f'dm[{SMALL}]')} | " in out
    assert main(["grid", "--only-table", *argv[1:], "--out", str(tmp_path)]) == 0  # nothing made again
    assert capsys.readouterr().out == out
    # the flag's old name still works, and says so
    assert main(["grid", "--only-table", *argv[1:-4], "--runs", "2", "--out", str(tmp_path)]) == 0
    assert "--runs is now --repeats" in capsys.readouterr().err


def test_specs_switch_the_engine_options_on_and_a_folder_keeps_its_own(tmp_path, digits_pool, one_thread):
    """`dm[factor=2]`, `atom[pool_dir=…,pool_interp=true,calib=1]` parse and run; a folder made with
    other options than its spec now says is refused; a CutMix evaluation is not the grid's result."""
    from dataclasses import replace

    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    specs = [f"dm[{SMALL},factor=2]", f"atom[{SMALL},pool_dir={digits_pool},pool_interp=true,calib=1]"]
    grid.GridSettings(methods=tuple(specs))  # every spec checked up front
    budget = replace(BUDGET, repeats=1)
    for spec in specs:
        folder = grid_member(tmp_path, spec, 1, 0)
        syn = grid.make_set(spec, 1, 0, budget, folder)
        assert grid.evaluate_job(syn, folder, budget)["set"]["images"] == 10
    made = json.loads((grid_member(tmp_path, specs[1], 1, 0) / RUN_FILE).read_text())
    assert made["config"]["pool_interp"] is True and made["resolved"]["pool"]["folder"] == str(digits_pool)
    folder = grid_member(tmp_path, specs[0], 1, 0)
    assert json.loads((folder / "eval.json").read_text())["set"]["decoded_images"] == 40
    with pytest.raises(AtomddError, match="'factor': \\(2, 1\\)"):  # made with factor 2, the spec says 1
        grid.make_set(f"dm[{SMALL}]", 1, 0, budget, folder)
    assert grid.finished(folder, budget) is not None
    evaluate_set(
        grid.make_set(specs[0], 1, 0, budget, folder),
        ["convnet"],
        EvalConfig(epochs=1, repeats=1, cutmix=0.5),
        out_dir=folder,
    )
    assert grid.finished(folder, budget) is None  # the latest evaluation there is not hard-label
