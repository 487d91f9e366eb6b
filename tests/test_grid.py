"""The resumable grid: make or reuse a job's folder, refuse one made with other settings, collect,
paired differences, and the table."""

import json

import pytest
import torch

from atomdd import grid as jobs
from atomdd.errors import AtomddError
from atomdd.report.images import grid_table

BUDGET = jobs.Budget(dataset="digits", steps=2, epochs=1, runs=2)
SMALL = "width=16,batch_real=16"


def test_method_specs():
    assert jobs.parse_method("atom") == ("atom", {})
    assert jobs.parse_method("atom[p_spatial=2,p_channel=6]") == (
        "atom",
        {"p_spatial": "2", "p_channel": "6"},
    )
    assert jobs.slug("atom[embedding=0.01]") == "atom_embedding_0.01"
    for bad in ("atom[", "atom[p_spatial]"):
        with pytest.raises(AtomddError, match="bad method spec"):
            jobs.parse_method(bad)


@pytest.mark.slow
def test_a_grid_is_made_reused_collected_and_paired(tmp_path, one_thread):
    specs = ["random", f"dm[{SMALL}]", f"atom[{SMALL}]"]
    for spec in specs:
        folder = jobs.job_folder(tmp_path, spec, 1, 0)
        syn = jobs.make_set(spec, 1, 0, BUDGET, folder)
        jobs.evaluate_job(syn, folder, BUDGET)
    atom = jobs.job_folder(tmp_path, specs[2], 1, 0)
    stamp = (atom / "run.json").stat().st_mtime_ns
    again = jobs.make_set(specs[2], 1, 0, BUDGET, atom)  # finished: loaded, not made again
    assert (atom / "run.json").stat().st_mtime_ns == stamp and len(again.labels) == 10
    git = json.loads((atom / "run.json").read_text())["git"]  # None outside a git checkout
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
    # a folder is named by its spec: one made with other matching settings is refused
    with pytest.raises(AtomddError, match="other settings"):
        jobs.make_set(f"atom[{SMALL},embedding=0.5]", 1, 0, BUDGET, atom)

    results = jobs.collect(tmp_path, BUDGET, specs, against=specs[2])
    assert list(results) == specs  # in the order asked for
    r, ref = results[specs[0]][1], results[specs[2]][1]
    assert len(r["per_seed"][0]["runs"]) == 2 and "paired" not in ref
    diffs = [a - b for a, b in zip(r["per_seed"][0]["runs"], ref["per_seed"][0]["runs"], strict=True)]
    assert r["paired"]["mean"] == pytest.approx(sum(diffs) / 2) and r["paired"]["n"] == 2
    # another budget finds nothing finished
    assert jobs.collect(tmp_path, jobs.Budget(dataset="digits", steps=2, epochs=2, runs=2), specs, None) == {}
    table = grid_table(results, BUDGET, specs[2]).splitlines()
    assert table[2] == "| method | IPC 1 | Δ IPC 1 |" and len(table) == 4 + len(specs)
    assert table[-1].startswith(f"| {specs[2]} | ") and table[-1].endswith("| – |")


def test_an_interrupted_job_resumes(tmp_path):
    folder = jobs.job_folder(tmp_path, f"atom[{SMALL}]", 1, 0)
    whole = jobs.make_set(f"atom[{SMALL}]", 1, 0, jobs.Budget(dataset="digits", steps=3), tmp_path / "whole")
    with pytest.raises(AtomddError, match="interrupted at step 1"):
        jobs.make_set(f"atom[{SMALL}]", 1, 0, jobs.Budget(dataset="digits", steps=3), folder, stop=True)
    resumed = jobs.make_set(f"atom[{SMALL}]", 1, 0, jobs.Budget(dataset="digits", steps=3), folder)
    assert torch.equal(whole.images, resumed.images)
