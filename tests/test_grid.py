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
