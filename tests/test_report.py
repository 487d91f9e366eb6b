"""`atomdd report` and `atomdd show`: every run's numbers as its JSON holds them, every linked figure
a real, non-blank PNG, one row per class, and a clear error for a folder that is no run."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atomdd.cli import main
from atomdd.errors import AtomddError
from atomdd.report import report
from atomdd.report.images import show


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, one_thread):
    """Two small digits runs (ATOM IPC 1, DM IPC 2), distilled a few steps and evaluated briefly."""
    import atomdd
    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    root = tmp_path_factory.mktemp("runs")
    folders = []
    for method, ipc in (("atom", 1), ("dm", 2)):
        folder = root / method
        syn = atomdd.distill("digits", ipc, method, out=folder, iterations=4, log_every=2)
        evaluate_set(syn, ["convnet"], EvalConfig(epochs=2, repeats=2), out_dir=folder)
        folders.append(folder)
    return folders


def _linked_pngs(page: Path) -> list[Path]:
    return [page.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())]


def _check_png(path: Path) -> np.ndarray:
    assert path.exists(), f"{path} is linked but missing"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.var() > 0, f"{path} is blank"
    return pixels


def test_report_holds_every_number_and_real_figures(two_runs, tmp_path):
    page = report(two_runs, tmp_path / "out")
    text = page.read_text()
    for folder in two_runs:
        ev = json.loads((folder / "eval.json").read_text())
        run = json.loads((folder / "run.json").read_text())
        for model, r in ev["models"].items():
            line = next(x for x in text.splitlines() if f"]({_rel(folder, page)})" in x and model in x)
            for number in [*r["runs"], r["mean"], r["std"]]:  # to 0.01, as they were measured
                assert f"{number:.2f}" in line, (number, line)
        assert run["git"]["commit"][:10] in text
        assert run["versions"]["torch"] in text
        assert json.dumps(run["config"]["match"]["embedding"]) in text  # the config is there
    assert "| method | IPC 1 | method − atom, IPC 1 | IPC 2 | method − atom, IPC 2 |" in text  # rows methods
    pngs = _linked_pngs(page)
    names = {p.name for p in pngs}
    assert any("loss" in n for n in names) and any(n.endswith("-ipc.png") for n in names)
    assert sum("grid" in n for n in names) == 2 and sum("attention" in n for n in names) == 2
    for png in pngs:
        _check_png(png)
    assert main(["report", *map(str, two_runs), "--out", str(tmp_path / "cli"), "--title", "Two runs"]) == 0
    assert (tmp_path / "cli" / "report.md").read_text().startswith("# Two runs")


def _rel(folder: Path, page: Path) -> str:
    import os

    return Path(os.path.relpath(folder, page.parent)).as_posix()


def test_report_of_a_grid_and_a_nas_folder(two_runs, tmp_path):
    import shutil

    grid = tmp_path / "grid"
    for folder in two_runs:
        ipc = json.loads((folder / "run.json").read_text())["config"]["ipc"]
        shutil.copytree(folder, grid / f"ipc{ipc}" / f"{folder.name}-seed0")
    nas = tmp_path / "nas"
    nas.mkdir()
    one = {"best_true_accuracy": 40.5, "spearman_all": 0.61, "spearman_top20": 0.2, "kendall_all": 0.5}
    one |= {"kendall_top20": 0.1, "minutes": 1.5, "images": 100, "architectures": 3, "accuracy": {}}
    settings = {"dataset": "digits", "space_name": "small", "seeds": [0], "epochs": 3}
    settings |= {"early_epochs": 1, "truth_epochs": 2}
    nas_json = {"proxies": {"random": one}, "settings": settings, "skipped": []}
    (nas / "nas.json").write_text(json.dumps(nas_json))
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(nas / "scatter.png")
    from atomdd.coreset import select
    from atomdd.evaluate import evaluate_set
    from atomdd.settings import EvalConfig

    coreset = tmp_path / "random-subset"  # a loose coreset folder: a set and eval.json, no run.json
    syn = select("digits", 1, "random")
    syn.save(coreset)
    ev = evaluate_set(syn, ["convnet"], EvalConfig(epochs=1, repeats=1), out_dir=coreset)
    from atomdd.evaluate import evaluate_whole

    whole = evaluate_whole("digits", ["convnet"], EvalConfig(epochs=1, repeats=1), out_dir=tmp_path / "whole")
    page = report([grid, nas, coreset, tmp_path / "whole"], tmp_path / "out")
    text = page.read_text()
    assert "## grid" in text and "| Spearman, whole space | 0.61 |" in text
    assert "| random |" in text and f"{ev['models']['convnet']['mean']:.2f}" in text
    assert "| method | IPC 1 | whole data |" in text and f"{whole['models']['convnet']['mean']:.2f}" in text
    for png in _linked_pngs(page):
        _check_png(png)


def test_the_table_pairs_each_method_with_atom_run_by_run(tmp_path):
    """Run r of every set starts from the same weights, so the difference is taken per (seed, run);
    the first-N column shows the accuracies on the first N test images."""

    def write(method: str, seed: int, runs: list[float], first: list[float]) -> None:
        model = {"runs": runs, "mean": sum(runs) / 2, "std": 0.0, "first": {"images": 100, "runs": first}}
        ev = {"models": {"convnet": model}, "config": {"epochs": 3}, "set": {"ipc": 1}, "dataset": "cifar10"}
        folder = tmp_path / "grid" / "ipc1" / f"{method}-seed{seed}"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps(ev))

    write("atom", 0, [30.0, 31.0], [29.0, 33.0])
    write("atom", 1, [29.0, 32.0], [30.0, 30.0])
    write("dm", 0, [31.0, 30.0], [30.0, 30.0])
    write("dm", 1, [32.0, 34.0], [31.0, 31.0])
    text = report([tmp_path / "grid"], tmp_path / "out").read_text()
    header = "| method | IPC 1 | method − atom, IPC 1 | IPC 1, first 100 test images |"
    # differences 1, -1 (seed 0) and 3, 2 (seed 1): mean 1.25, sample std 1.71; seed means 0 and 2.5
    assert (
        header in text and "| dm | 31.8 ± 1.5 (n=2) | +1.25 ± 1.71 (3/4 models ahead; seeds ± 1.77) |" in text
    )
    assert "| atom | 30.5 ± 1.1 (n=2) | – | 30.5 ± 1.5 |" in text


def test_show_writes_one_row_per_class(two_runs, tmp_path):
    from atomdd.report.images import display_images, grid_image, set_caption
    from atomdd.sets import load_synthetic

    syn = load_synthetic(two_runs[1])
    path = show(two_runs[1], tmp_path / "grid.png")
    pixels = _check_png(path)
    # the same grid without its caption line says where the caption ends and the images' right edge
    plain = grid_image(display_images(syn)[0], syn.labels, class_names=syn.classes)
    top = pixels.shape[0] - plain.height
    assert top > 0 and set_caption(syn) == "dm, digits, IPC 2, 4 steps, seed 0"  # what it is
    # the column through the last image of each row (IPC 2: every row has two): a dark (or coloured)
    # band per class, white between
    column = pixels[top:, plain.width - 5].min(axis=1) < 250
    bands = int(column[0]) + int(np.sum(column[1:] & ~column[:-1]))
    assert bands == len(syn.classes) == 10
    one = show(two_runs[1], tmp_path / "one.png", klass="3")
    assert _check_png(one).shape[0] > pixels.shape[0] / 10  # enlarged
    assert main(["show", str(two_runs[1]), "--class", "7", "--out", str(tmp_path / "seven.png")]) == 0
    _check_png(tmp_path / "seven.png")


def test_bad_input_is_a_clear_error(two_runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtomddError, match="is no run"):
        report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(AtomddError, match="not a folder"):
        report([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(AtomddError, match="no class 'cat'"):
        show(two_runs[0], tmp_path / "x.png", klass="cat")
    with pytest.raises(AtomddError, match="no synthetic set"):
        show(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "is no run" in capsys.readouterr().err


def test_a_zca_set_far_wider_than_real_images_is_shown_stretched_not_clipped():
    """Sets distilled in ZCA space reach several times real images' spread: a plain inverse clips
    most pixels; the display stretches each image and leaves the set's data alone."""
    import torch

    from atomdd.data.transforms import Preprocess
    from atomdd.report.images import display_images
    from atomdd.sets import SyntheticSet

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (300, 3, 8, 8), generator=g, dtype=torch.uint8)
    prep = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), zca=True).fit(real)
    images = prep(real[:20]) * 10  # ten times the spread of real whitened images
    syn = SyntheticSet(
        images.clone(),
        torch.arange(20) % 10,
        "cifar10",
        preprocess_tensors=prep.tensors(),
        preprocess_meta=prep.meta(),
    )
    clipped = prep.inverse(images)
    assert ((clipped == 0) | (clipped == 1)).float().mean() > 0.5  # what a plain inverse shows
    shown, _, caption = display_images(syn)
    assert ((shown == 0) | (shown == 1)).float().mean() < 0.05 and "contrast-stretched" in caption
    assert torch.equal(syn.images, images)  # the data is untouched


def test_the_report_s_old_import_path_still_works():
    """`atomdd.reporting.report` (the README's spelling before the report had a package) still
    imports, and says where it went."""
    import importlib
    import sys

    sys.modules.pop("atomdd.reporting", None)
    with pytest.warns(DeprecationWarning, match="atomdd.report"):
        old = importlib.import_module("atomdd.reporting")
    assert old.report is report


def _member(grid: Path, name: str, config: dict | None, runs: list[float] | None, **run_extra) -> Path:
    folder = grid / f"ipc{(config or {}).get('ipc', 1)}" / name
    folder.mkdir(parents=True)
    if config is not None:
        record = {"status": "done", "config": config} | run_extra
        (folder / "run.json").write_text(json.dumps(record))
    if runs is not None:
        model = {"runs": runs, "mean": float(np.mean(runs)), "std": float(np.std(runs))}
        ev = {"models": {"convnet": model}, "config": {"epochs": 3}, "set": {"ipc": 1}, "dataset": "cifar10"}
        (folder / "eval.json").write_text(json.dumps(ev))
    return folder


def test_row_labels_say_what_differs_from_today_s_preset(tmp_path):
    """Issue 33: 4. A row is labelled with the method spec that would make its sets today (the
    settings beyond the preset in brackets); a folder named under an earlier preset is flagged (†)
    with what changed; identical picks are noted; one model shows no spread; runs not evaluated are
    listed; the page holds no path of this machine."""
    from dataclasses import asdict

    from atomdd.distillation.config import make_config

    def made(method: str, **settings) -> dict:  # a run.json's config, as the run wrote it
        return asdict(make_config("cifar10", 1, method, iterations=4, data_root="/secret/data", **settings))

    grid = tmp_path / "grid"
    command = "/opt/venv/bin/atomdd grid --data-root /secret/data --out /elsewhere/checkout/grid"
    _member(grid, "atom-seed0", made("atom", embedding=0.1), [30.0, 31.0], command=command)
    _member(grid, "atom_embedding_0.01-seed0", made("atom", embedding=0.01), [29.0, 30.0])
    _member(grid, "dm_clip_true-seed0", made("dm", clip=True), [26.0])
    _member(grid, "dm_factor_2_distance_cf-seed0", made("dm", factor=2, distance="cf"), [27.0])
    _member(grid, "dm-plus-seed0", made("dm-plus"), [28.0])
    _member(grid, "herding-seed0", None, [20.0, 21.0])
    _member(grid, "kcenter-seed0", None, [20.0, 21.0])
    _member(grid, "datadam-seed0", made("datadam"), None)  # still distilling
    text = report([grid], tmp_path / "out").read_text()
    assert "| atom[embedding=0.1] † | 30.5 ± 0.5 (n=1) |" in text  # what `atom` meant then
    assert "| atom | 29.5 ± 0.5 (n=1) |" in text  # what `atom` means now, whatever its folder's name
    assert "| dm[clip=true] | 26.0 (1 model) |" in text and "± 0.0 (n=1)" not in text
    assert "| dm[factor=2,distance=cf] | 27.0 (1 model) |" in text  # the engine's options (issue 32)
    assert "| dm-plus | 28.0 (1 model) |" in text
    assert (
        "† `atom[embedding=0.1]` was made as `atom` under an earlier preset (embedding 0.1 then, 0.01 now)"
        in text
    )
    assert "`atom` was made as `atom_embedding_0.01`" in text
    assert "`herding` and `kcenter` at IPC 1: the same accuracy model by model" in text
    assert (
        "| [ipc1/datadam-seed0](../grid/ipc1/datadam-seed0) | datadam | 1 | 0 | – | not evaluated |" in text
    )
    assert "/secret" not in text and "/elsewhere" not in text and "/opt/venv" not in text
    assert "--data-root DATA --out ../grid" in text and 'data_root `"DATA"`' in text
    from atomdd.report.page import render

    page = render([grid], tmp_path / "out" / "page.md", figures=False, evaluated_only=True)
    assert "Not evaluated yet (no eval.json), so in no table: ipc1/datadam-seed0." in page


def test_charts_are_paper_figures_in_the_format_asked(two_runs, tmp_path):
    """Vector charts on request (`--format pdf|svg`), and a run's attention maps drawn again as
    one (`atomdd show --attention`); every series its own colour and marker."""
    from atomdd.report.charts import series_style

    for fmt, magic in (("pdf", b"%PDF"), ("svg", b"<?xml")):
        out = tmp_path / fmt
        assert main(["report", *map(str, two_runs), "--out", str(out), "--format", fmt]) == 0
        charts = [p for p in _linked(out / "report.md") if p.suffix == f".{fmt}"]
        assert len(charts) == 2 and all(p.read_bytes().startswith(magic) for p in charts), charts
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")):
        target = tmp_path / f"attention{suffix}"
        assert main(["show", str(two_runs[0]), "--attention", "--out", str(target)]) == 0
        assert target.read_bytes().startswith(magic)
    styles = {tuple(series_style(i).values()) for i in range(40)}
    assert len(styles) == 40  # no two series alike
    with pytest.raises(AtomddError, match="png, pdf, svg"):
        report(two_runs, tmp_path / "bad", fmt="jpg")


def _linked(page: Path) -> list[Path]:
    return [page.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())]
