"""Reliability cases of issue 17: each test names the case it covers and failed before its fix."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from atomdd import evaluate as evaluation
from atomdd.data import Dataset, load_dataset
from atomdd.data.idx import read_idx
from atomdd.errors import AtomddError
from atomdd.io import write_json
from atomdd.sets import SyntheticSet, load_synthetic


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(proc.stdout)


def _small_set() -> SyntheticSet:
    return SyntheticSet(
        images=torch.arange(256.0).reshape(4, 1, 8, 8) / 256,
        labels=torch.tensor([0, 0, 1, 1]),
        dataset="digits",
        classes=("0", "1"),
        preprocess_meta={"mean": [0.5], "std": [0.2], "zca": False, "zca_eps": None},
        meta={"method": "test", "ipc": 2, "seed": 0, "b": 1, "a": 2},
    )


# --------------------------------------------------------------------------------------------------
# case 7: a gzip bomb is refused after the header's promised bytes, without decompressing it whole


def test_gzip_bomb_is_refused_without_decompressing_it(tmp_path: Path) -> None:
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    zeros = bytes(1 << 20)
    with gzip.open(bomb, "wb", compresslevel=9) as f:  # 64 MiB of zeros behind a 10-image header
        f.write(_idx_header(10, 28, 28))
        for _ in range(64):
            f.write(zeros)
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(AtomddError, match=r"promises 7840 \(trailing bytes\)"):
            read_idx(bomb, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert time.perf_counter() - t0 < 5


def test_idx_header_promising_more_than_the_file_can_hold(tmp_path: Path) -> None:
    """Absurd dims are refused before allocating: plain (file size) and gzip (deflate's 1032× bound)."""
    plain = tmp_path / "x-idx3-ubyte"
    plain.write_bytes(_idx_header(60000, 28, 28) + bytes(100))
    with pytest.raises(AtomddError, match="file ends early"):
        read_idx(plain, 3)
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_header(0xFFFFFFFF, 0xFFFF, 0xFFFF) + bytes(100)))
    with pytest.raises(AtomddError, match="more than any IDX file"):
        read_idx(gz, 3)
    gz.write_bytes(gzip.compress(_idx_header(4000, 1000, 1000) + bytes(100)))  # 4 GB from ~150 bytes
    tracemalloc.start()
    try:
        with pytest.raises(AtomddError, match="at most .* compressed bytes.*file ends early"):
            read_idx(gz, 3)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_idx_gzip_still_reads_exactly(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(_idx_header(3, 4, 5) + arr.tobytes()))
    assert np.array_equal(read_idx(gz, 3), arr)
    gz.write_bytes(gzip.compress(_idx_header(3, 4, 5) + arr.tobytes()[:-1]))
    with pytest.raises(AtomddError, match="59 data bytes .* promises 60 \\(file ends early\\)"):
        read_idx(gz, 3)


# --------------------------------------------------------------------------------------------------
# case 8: an empty split is refused at load


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_empty_split_is_refused_at_load(tmp_path: Path, split: str) -> None:
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for s in ("train", "t10k"):
        n = 0 if s == split else 10
        (folder / f"{s}-images-idx3-ubyte").write_bytes(_idx_header(n, 28, 28) + bytes(n * 784))
        (folder / f"{s}-labels-idx1-ubyte").write_bytes(_idx_header(n) + bytes(range(n)))
    name = "train" if split == "train" else "test"
    with pytest.raises(AtomddError, match=f"mnist: the {name} split is empty .*{folder}"):
        load_dataset("mnist", tmp_path)


def test_empty_test_split_of_a_dataset_object() -> None:
    x, y = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(AtomddError, match="toy: the test split is empty"):
        Dataset("toy", x, y, x[:0], y[:0], ("a",), (0.5,), (0.2,))


# --------------------------------------------------------------------------------------------------
# case 6: temporary files of killed writes are removed by the next write into the folder


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale = tmp_path / f".synthetic.safetensors.atomdd-{dead}-0123abcd.tmp"
    other_target = tmp_path / f".checkpoint.safetensors.atomdd-{dead}-89abcdef.tmp"
    old_style = tmp_path / ".synthetic.safetensors.k2_x9q0a.tmp"  # tempfile.mkstemp's name, pre-fix
    recent_old_style = tmp_path / ".run.json.abcdefgh.tmp"
    alive = tmp_path / f".synthetic.safetensors.atomdd-{live}-00000000.tmp"
    foreign = tmp_path / ".notes.txt.tmp"
    for f in (stale, other_target, old_style, recent_old_style, alive, foreign):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    _small_set().save(tmp_path)
    left = sorted(f.name for f in tmp_path.iterdir())
    assert stale.name not in left and other_target.name not in left and old_style.name not in left
    assert {alive.name, foreign.name, recent_old_style.name, "synthetic.safetensors"} <= set(left)
    from atomdd.io import clean_stale_temps

    assert clean_stale_temps(tmp_path) == []  # a live writer's file stays


def test_killed_writer_leaves_a_temp_file_the_next_write_removes(tmp_path: Path) -> None:
    """SIGKILL inside an atomic write, for real: the leftover is gone after the next write."""
    script = (
        "import os, signal, sys\n"
        "from atomdd.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)], env=os.environ | {"PYTHONPATH": _src()}
    )
    assert proc.returncode == -9
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    write_json(target, {"status": "done"})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["run.json"]


def test_unpack_folder_of_a_killed_extraction_is_removed(tmp_path: Path) -> None:
    import zipfile

    from atomdd.data.download import extract

    left = tmp_path / "root" / f".atomdd-unpack-{_dead_pid()}-k2x9q0a_"
    (left / "toyset").mkdir(parents=True)
    (left / "toyset" / "half.bin").write_bytes(b"partial")
    live = tmp_path / "root" / f".atomdd-unpack-{os.getpid()}-abc"
    live.mkdir()
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("toyset/a.txt", "A")
    extract(archive, tmp_path / "root")
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [live.name, "toyset"]


def _src() -> str:
    import atomdd

    return str(Path(atomdd.__file__).parent.parent)


# --------------------------------------------------------------------------------------------------
# case 11 (part): file modes follow the umask; the same set saved twice gives the same bytes


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_json(tmp_path / "run.json", {"a": 1})
        path = _small_set().save(tmp_path)
    finally:
        os.umask(old)
    for f in (tmp_path / "run.json", path):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask


def test_saving_the_same_set_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    digests = set()
    for i in range(6):
        path = _small_set().save(tmp_path / str(i))
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    back = load_synthetic(tmp_path / "0")
    assert torch.equal(back.labels, _small_set().labels) and back.meta == _small_set().meta


# --------------------------------------------------------------------------------------------------
# case 11 (rest): messages, exit codes and the run's wall time


class _RunsCode:
    """Pickled as a call of os.system: loading it with weights_only must refuse, with our words only."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_peer_refusal_prints_only_our_message(tmp_path: Path, digits) -> None:
    from atomdd.sets import load_peer_set

    for legacy in (False, True):
        f = tmp_path / f"peer-{legacy}.pt"
        torch.save({"data": [[torch.zeros(1), _RunsCode()]]}, f, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(AtomddError) as e:
            load_peer_set(f, digits)
        msg = str(e.value)
        assert "refused" in msg and "system" in msg and "runs nothing" in msg
        for torch_hint in (
            "weights_only=False",
            "`weights_only`",
            "pytorch.org",
            "add_safe_globals",
            "torch.load",
        ):
            assert torch_hint not in msg


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from atomdd.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_download_is_suggested_only_where_the_command_has_it(capsys, tmp_path: Path) -> None:
    root = str(tmp_path / "empty")
    for argv in (
        ["coreset", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "c"), "--data-root", root],
        ["evaluate", "--whole", "--dataset", "mnist", "--data-root", root, "--epochs", "1", "--repeats", "1"],
    ):
        code, err = _cli(capsys, *argv)
        assert code == 2 and "missing" in err and "add --download" not in err, argv
    code, err = _cli(
        capsys, "distill", "--dataset", "mnist", "--data-root", root, "--out", str(tmp_path / "d")
    )
    assert code == 2 and "add --download" in err


def test_ipc_message_names_a_valid_range(digits) -> None:
    from atomdd.distillation.config import make_config
    from atomdd.distillation.driver import Distiller

    cfg = make_config("digits", 1, "dm", iterations=1, width=16, batch_real=4)
    keep = digits.train_labels != 9  # class 9 loses every train image
    no_nines = Dataset(
        "digits",
        digits.train_images[keep],
        digits.train_labels[keep],
        digits.test_images,
        digits.test_labels,
        digits.classes,
        digits.mean,
        digits.std,
    )
    with pytest.raises(AtomddError) as e:
        Distiller(cfg, no_nines)
    assert "'9'" in str(e.value) and "no train images" in str(e.value) and "≤ 0" not in str(e.value)
    with pytest.raises(AtomddError, match=r"choose ipc from 1 to \d+"):
        Distiller(make_config("digits", 1000, "dm", iterations=1, width=16, batch_real=4), digits)


_TINY = ["--dataset", "digits", "--ipc", "1", "--model", "convnet(width=16)", "--batch-real", "8", "--quiet"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_exit_codes(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig, code) -> None:
    from atomdd.distillation.driver import Distiller

    honest = Distiller.loss_and_grad

    def signalled(self, step):
        if step == 1:
            os.kill(os.getpid(), sig)
        return honest(self, step)

    monkeypatch.setattr(Distiller, "loss_and_grad", signalled)
    out = tmp_path / "run"
    got, err = _cli(capsys, "distill", *_TINY, "--iterations", "5", "--out", str(out))
    assert got == code and "interrupted at step 2" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and "interrupted at step 2" in record["error"]


def test_wall_seconds_accumulate_over_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomdd.api import distill
    from atomdd.distillation.driver import Distiller

    honest = Distiller.loss_and_grad

    def slow(self, step):
        time.sleep(0.5)
        return honest(self, step)

    monkeypatch.setattr(Distiller, "loss_and_grad", slow)
    cfg = dict(width=16, batch_real=8, checkpoint_every=1)
    distill("digits", 1, "dm", out=tmp_path, iterations=2, **cfg)
    first = json.loads((tmp_path / "run.json").read_text())["wall_seconds"]
    distill("digits", 1, "dm", out=tmp_path, resume=True, iterations=4, **cfg)
    both = json.loads((tmp_path / "run.json").read_text())["wall_seconds"]
    assert first >= 1.0 and both >= first + 0.9, (first, both)


# --------------------------------------------------------------------------------------------------
# case 9: non-finite settings refused; no claim of a checkpoint that is not there; run.json "failed"


def test_non_finite_settings_are_refused(capsys, tmp_path: Path) -> None:
    from atomdd.distillation.config import DistillConfig, make_config
    from atomdd.distillation.driver import Distiller
    from atomdd.settings import EvalConfig, MatchConfig

    for value in ("nan", "inf", "-inf", float("nan")):
        with pytest.raises(AtomddError, match="finite"):
            make_config("digits", 1, "atom", lr_img=value)
    with pytest.raises(AtomddError, match="finite"):
        make_config("digits", 1, "atom", momentum=float("inf"))
    conf = tmp_path / "c.yaml"
    conf.write_text("p_spatial: .nan\n")
    with pytest.raises(AtomddError, match="p_spatial=nan: expected a finite number"):
        make_config(config_file=conf)
    with pytest.raises(AtomddError, match="finite"):
        Distiller(DistillConfig(match=MatchConfig(scale=float("inf"))))
    for field in ("lr", "momentum", "weight_decay", "lr_decay", "decay_at"):
        with pytest.raises(AtomddError, match=f"{field}=nan"):
            EvalConfig(**{field: float("nan")})
    code, err = _cli(capsys, "distill", *_TINY, "--lr-img", "nan", "--out", str(tmp_path / "x"))
    assert code == 2 and "lr_img='nan': expected a finite number" in err


def test_failure_without_checkpoint_claims_none_and_run_json_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomdd.api import distill
    from atomdd.distillation.driver import Distiller
    from atomdd.folders.layout import CHECKPOINT

    honest = Distiller.loss_and_grad

    def poisoned(self, step):
        loss, terms = honest(self, step)
        return loss * float("nan"), terms

    monkeypatch.setattr(Distiller, "loss_and_grad", poisoned)
    with pytest.raises(AtomddError) as e:
        distill("digits", 1, "dm", out=tmp_path, iterations=3, width=16, batch_real=8, checkpoint_every=100)
    assert "loss became nan at step 0" in str(e.value) and "checkpoint" not in str(e.value)
    assert not (tmp_path / CHECKPOINT).exists()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and "loss became nan at step 0" in record["error"]


def test_run_json_records_failure_of_any_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomdd.api import distill
    from atomdd.distillation.driver import Distiller

    def broken(self, step):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(Distiller, "loss_and_grad", broken)
    with pytest.raises(RuntimeError):
        distill("digits", 1, "dm", out=tmp_path, iterations=3, width=16, batch_real=8)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "out of memory (simulated)"


# --------------------------------------------------------------------------------------------------
# crashes the fuzzing found (tests/test_fuzz.py, benchmarks/fuzz.py), each pinned by its input


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("c.yaml", b"lr_img: \xff\xfe", "not UTF-8"),
        ("c.json", b"[" * 100_000, "parse|nested"),
        ("c.toml", b"a = " + b"[" * 3000, "parse|nested"),
    ],
)
def test_config_file_found_by_fuzzing(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    from atomdd.distillation.config import make_config

    (tmp_path / name).write_bytes(content)
    with pytest.raises(AtomddError, match=match):
        make_config(config_file=tmp_path / name)


@pytest.mark.parametrize("key, value", [("preprocess", "null"), ("classes", "5"), ("meta", "[1]")])
def test_synthetic_metadata_found_by_fuzzing(tmp_path: Path, key: str, value: str) -> None:
    from safetensors.torch import load_file, safe_open, save_file

    path = _small_set().save(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(path)), str(path), metadata=metadata | {key: value})
    with pytest.raises(AtomddError, match="malformed"):
        load_synthetic(tmp_path)


def test_truncated_legacy_peer_file_found_by_fuzzing(tmp_path: Path, digits) -> None:
    from atomdd.sets import load_peer_set

    f = tmp_path / "peer.pt"
    torch.save(
        {"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]]}, f, _use_new_zipfile_serialization=False
    )
    data = f.read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 200)):
        f.write_bytes(data[:cut])
        with pytest.raises(AtomddError):
            load_peer_set(f, digits)


def test_tinyimagenet_text_and_image_bombs_found_by_fuzzing(tmp_path: Path) -> None:
    from PIL import Image

    from atomdd.data.tiny import read_tinyimagenet

    root = tmp_path / "tiny-imagenet-200"
    (root / "train" / "n1" / "images").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "train" / "n1" / "images" / "a.JPEG")
    Image.new("RGB", (64, 64)).save(root / "val" / "images" / "v.JPEG")
    (root / "val" / "val_annotations.txt").write_text("v.JPEG\tn1\t0\t0\t63\t63\n")
    (root / "wnids.txt").write_bytes(b"n1\n\xc8\n")
    with pytest.raises(AtomddError, match="wnids.txt is truncated or corrupt: not UTF-8"):
        read_tinyimagenet(root)
    (root / "wnids.txt").write_text("n1\n")
    Image.new("L", (6000, 6000)).save(root / "val" / "images" / "v.JPEG", "PNG")  # 36 MP, a PNG
    tracemalloc.start()
    try:
        with pytest.raises(AtomddError, match="is 6000×6000, expected 64×64"):
            read_tinyimagenet(root)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20  # refused from the header, not decoded
    finally:
        tracemalloc.stop()


def test_peer_file_with_a_forged_pickle_length_allocates_nothing_large(tmp_path: Path, digits) -> None:
    from atomdd.sets import load_peer_set

    f = tmp_path / "peer.pt"  # not a zip, so read as a legacy pickle: a 2 GiB string "follows"
    f.write_bytes(b"\x80\x02X" + struct.pack("<I", 2**31 - 1) + b"abc")
    tracemalloc.start()
    try:
        with pytest.raises(AtomddError, match="not a readable torch.save file"):
            load_peer_set(f, digits)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_damaged_tinyimagenet_cache_is_not_used(tmp_path: Path) -> None:
    from PIL import Image

    from atomdd.data.tiny import TINY_CACHE, read_tinyimagenet

    root = tmp_path / "tiny-imagenet-200"
    (root / "train" / "n1" / "images").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "train" / "n1" / "images" / "a.JPEG")
    Image.new("RGB", (64, 64), (40, 50, 60)).save(root / "val" / "images" / "v.JPEG")
    (root / "val" / "val_annotations.txt").write_text("v.JPEG\tn1\t0\t0\t63\t63\n")
    (root / "wnids.txt").write_text("n1\n")
    first = read_tinyimagenet(root)
    train, test = first.train_images.clone(), first.test_images.clone()  # the read maps the cache file
    cache = root / TINY_CACHE
    data = bytearray(cache.read_bytes())
    data[-100] ^= 0xFF  # one cached pixel
    cache.write_bytes(bytes(data))
    again = read_tinyimagenet(root)
    assert torch.equal(train, again.train_images)
    assert torch.equal(test, again.test_images)


# --------------------------------------------------------------------------------------------------
# case 1: a set that cannot give a meaningful score is refused before any training (exit 2)


def _digits_set(digits, labels: torch.Tensor, fill: float | None = None, ipc: int | None = 1) -> SyntheticSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(len(labels), digits.channels, *digits.image_size, generator=gen)
    if fill is not None and len(labels):
        images[-1, 0, 0, 0] = fill
    meta = {"method": "test", "dataset_hash": digits.content_hash} | ({"ipc": ipc} if ipc else {})
    return SyntheticSet.of(images, labels, digits, digits.preprocess(False), meta)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("empty", "no images"),
        ("some classes", "no image of class(es) '7', '8', '9'"),
        ("ipc differs", "records 1 images per class"),
        ("label out of range", "must lie in 0–9"),
    ],
)
def test_an_unusable_set_is_refused_before_training(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits, case: str, expect: str
) -> None:
    import atomdd.evaluate as ev

    every = torch.arange(10)
    labels, fill = every, None
    if case in ("nan", "inf"):
        fill = float(case)
    elif case == "empty":
        labels = torch.zeros(0, dtype=torch.long)
    elif case == "some classes":
        labels = torch.arange(7)
    elif case == "ipc differs":
        labels = torch.cat([every, torch.tensor([3])])
    syn = _digits_set(digits, labels, fill)
    if case == "label out of range":
        syn.labels = torch.cat([torch.arange(9), torch.tensor([10])])
    syn.save(tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained on an unusable set")

    monkeypatch.setattr(evaluation, "train_models", no_training)  # where the evaluation trains
    code, err = _cli(capsys, "evaluate", str(tmp_path), "--epochs", "1", "--repeats", "1")
    assert code == 2 and expect in err, err
    assert not (tmp_path / "eval.json").exists()
    with pytest.raises(AtomddError, match=re.escape(expect)):
        ev.evaluate_set(load_synthetic(tmp_path), "convnet", ev.EvalConfig(epochs=1, repeats=1))


def test_a_usable_set_still_evaluates(digits) -> None:
    import atomdd.evaluate as ev

    syn = _digits_set(digits, torch.arange(10).repeat_interleave(2), ipc=2)
    report = ev.evaluate_set(syn, "convnet(width=8)", ev.EvalConfig(epochs=1, repeats=1), dataset=digits)
    assert len(report["models"]["convnet(width=8)"]["runs"]) == 1


# --------------------------------------------------------------------------------------------------
# case 2: a different set or run in --out is never replaced without --overwrite


def _digest(folder: Path) -> dict[str, str]:
    """Every output file's digest (the lock file, which names its last holder, is no output)."""
    from atomdd.lock import LOCK_FILE

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != LOCK_FILE
    }


def test_coreset_into_a_distill_run_and_back_needs_overwrite(capsys, tmp_path: Path) -> None:
    run, core = tmp_path / "run", tmp_path / "core"
    distill_args = ["distill", *_TINY, "--method", "dm", "--iterations", "2", "--out"]
    coreset_args = ["coreset", "--dataset", "digits", "--ipc", "1", "--out"]
    assert _cli(capsys, *distill_args, str(run))[0] == 0
    assert _cli(capsys, *coreset_args, str(core))[0] == 0
    before_run, before_core = _digest(run), _digest(core)
    assert {"run.json", "grid.png", "checkpoint.safetensors"} <= set(before_run)

    code, err = _cli(capsys, *coreset_args, str(run))  # a coreset into a distillation's folder
    assert code == 2 and "already holds a run (distillation: dm on digits" in err and "--overwrite" in err
    code, err = _cli(capsys, *distill_args, str(core))  # a distillation into a coreset's folder
    assert code == 2 and "already holds a coreset set (method random, dataset digits, ipc 1, seed 0)" in err
    code, err = _cli(capsys, *coreset_args, str(core), "--seed", "1")  # another coreset
    assert code == 2 and "already holds a coreset set" in err
    assert _digest(run) == before_run and _digest(core) == before_core  # nothing replaced

    assert _cli(capsys, *coreset_args, str(core))[0] == 0  # the same coreset again: same bytes
    assert _digest(core) == before_core

    assert _cli(capsys, *coreset_args, str(run), "--overwrite")[0] == 0
    assert set(_digest(run)) == {"synthetic.safetensors"}  # nothing of the run describes the coreset
    assert load_synthetic(run).meta["kind"] == "coreset"
    assert _cli(capsys, *distill_args, str(core), "--overwrite")[0] == 0
    record = json.loads((core / "run.json").read_text())
    assert record["status"] == "done" and load_synthetic(core).meta["method"] == "dm"


# --------------------------------------------------------------------------------------------------
# case 10: run.json says "done" only once the figures are written


def test_a_kill_while_the_figures_are_drawn_leaves_the_run_unfinished_and_resumable(tmp_path: Path) -> None:
    from atomdd.api import distill

    out = tmp_path / "run"
    cfg = dict(iterations=2, model="convnet(width=16)", batch_real=8)
    script = (
        "import os, signal\n"
        "import atomdd.report.images as images\n"
        "from atomdd.api import distill\n"
        "def killed(out, data=None):\n"
        "    (out / 'grid.png').write_bytes(b'half a png')\n"  # the kill lands mid-figure
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "images.save_run_figures = killed\n"
        f"distill('digits', 1, 'dm', out={str(out)!r}, **{cfg!r})\n"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "running"  # before: "done", with the figures missing
    done = distill("digits", 1, "dm", out=out, resume=True, **cfg)  # what a rerun (jobs.py) does
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done" and record["step"] == 2 and len(done.labels) == 10
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "attention.png").exists()


def test_run_json_is_written_done_after_the_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import atomdd.report.images as images
    from atomdd.api import distill

    seen = []
    honest = images.save_run_figures

    def watched(out, data=None):
        seen.append(json.loads((Path(out) / "run.json").read_text())["status"])
        honest(out, data)

    monkeypatch.setattr(images, "save_run_figures", watched)
    distill("digits", 1, "dm", out=tmp_path, iterations=1, model="convnet(width=16)", batch_real=8)
    assert seen == ["running"]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "done"


# --------------------------------------------------------------------------------------------------
# case 5: an evaluation shows its progress (a bar on a terminal, a line every 20 s in a log)


class _Terminal:
    """A stream that says it is a terminal and keeps what is written to it."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_evaluation_progress_in_a_log_and_on_a_terminal(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    import atomdd.progress as progress

    syn = _digits_set(digits, torch.arange(10))
    syn.save(tmp_path)
    monkeypatch.setenv(progress.EVERY_ENV, "0.02")  # a line every 20 ms instead of every 20 s
    argv = ["evaluate", str(tmp_path), "--models", "convnet(width=8)", "--epochs", "3", "--repeats", "2"]
    code, err = _cli(capsys, *argv)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("convnet(width=8): ")]
    assert lines[0] == "convnet(width=8): 2 models × 3 epochs", lines  # what the task is
    assert re.fullmatch(r"convnet\(width=8\): \d+\.\d\d ± \d+\.\d\d % over 2 models \(\d+\.\d s\)", lines[-1])
    where = r"(2 models × 3 epochs|repeat [12]/2, epoch [1-3]/3|testing repeat [12]/2 on \d+ test images)"
    for line in lines[1:-1]:  # where it is, how far, how long until the end
        assert re.fullmatch(rf"convnet\(width=8\): {where} \(\d+ %\), \d+:\d\d elapsed, ETA [\d:?]+", line), (
            line
        )
    assert len(lines) > 2, err

    monkeypatch.setenv(progress.EVERY_ENV, "30")  # a log file: nothing between the start and the end
    code, err = _cli(capsys, *argv, "--seed", "1")  # another seed: the repeats above are not reused
    lines = [line for line in err.splitlines() if line.startswith("convnet(width=8): ")]
    assert code == 0 and len(lines) == 2 and "over 2 models" in lines[1], err

    screen = _Terminal()
    bar = progress.Progress("convnet", 2 * 3, file=screen)
    for repeat in (1, 2):
        for epoch in (1, 2, 3):
            bar.advance(1, f"repeat {repeat}/2, epoch {epoch}/3")
    bar.close("97.00 ± 1.00 % over 2 models")
    assert "convnet: 100%" in screen.text and "6/6" in screen.text and "epoch" in screen.text
    assert "97.00 ± 1.00 % over 2 models" in screen.text


# --------------------------------------------------------------------------------------------------
# case 4: finished repeats kept and reused; eval.json merged, never overwritten; --whole writes its result


def test_an_interrupted_evaluation_resumes_from_its_finished_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    import atomdd.evaluate as ev

    syn = _digits_set(digits, torch.arange(10).repeat_interleave(2), ipc=2)
    cfg = ev.EvalConfig(epochs=2, repeats=3, batched=False, test_limit=50)
    whole = ev.evaluate_set(syn, "convnet(width=8)", cfg, dataset=digits)["models"]["convnet(width=8)"]

    honest, trained = evaluation.train_models, []  # where the evaluation trains

    def crashing(*args, **kwargs):
        repeats = args[5]
        if 2 in repeats:
            raise RuntimeError("killed (simulated) while training repeat 2")
        trained.extend(repeats)
        return honest(*args, **kwargs)

    folder = tmp_path / "set"
    monkeypatch.setattr(evaluation, "train_models", crashing)
    with pytest.raises(RuntimeError):
        ev.evaluate_set(syn, "convnet(width=8)", cfg, out_dir=folder, dataset=digits)
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == [0, 1] and trained == [0, 1]

    monkeypatch.setattr(evaluation, "train_models", lambda *a, **k: trained.extend(a[5]) or honest(*a, **k))
    resumed = ev.evaluate_set(syn, "convnet(width=8)", cfg, out_dir=folder, dataset=digits)
    got = resumed["models"]["convnet(width=8)"]
    assert trained == [0, 1, 2]  # only the missing repeat was trained
    assert got["runs"] == whole["runs"] and got["first"]["runs"] == whole["first"]["runs"]

    changed = _digits_set(digits, torch.arange(10).repeat_interleave(2), ipc=2)
    changed.images[0, 0, 0, 0] += 1  # another set in the same folder: nothing of the old one is reused
    ev.evaluate_set(changed, "convnet(width=8)", replace(cfg, repeats=1), out_dir=folder, dataset=digits)
    assert trained == [0, 1, 2, 0]


def test_eval_json_merges_models_and_protocols(tmp_path: Path, digits) -> None:
    import atomdd.evaluate as ev

    syn = _digits_set(digits, torch.arange(10).repeat_interleave(2), ipc=2)
    one, two = ev.EvalConfig(epochs=1, repeats=1), ev.EvalConfig(epochs=2, repeats=1)
    ev.evaluate_set(syn, ["convnet(width=8)", "mlp"], one, out_dir=tmp_path, dataset=digits)
    first = json.loads((tmp_path / "eval.json").read_text())
    assert set(first["models"]) == {"convnet(width=8)", "mlp"}
    ev.evaluate_set(syn, ["mlp"], two, out_dir=tmp_path, dataset=digits)  # another protocol, one model
    ev.evaluate_set(syn, ["mlp"], one, out_dir=tmp_path, dataset=digits)  # the first again: reused
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert len(saved["results"]) == 2
    old = saved["results"][saved["protocol"]]
    assert set(old) == {"convnet(width=8)", "mlp"}  # the cross-architecture table is still there
    assert old["convnet(width=8)"]["runs"] == first["models"]["convnet(width=8)"]["runs"]
    assert set(saved["models"]) == {"convnet(width=8)", "mlp"} and saved["config"]["epochs"] == 1
    (newer,) = [k for k in saved["results"] if k != saved["protocol"]]
    assert "epochs=2" in newer and set(saved["results"][newer]) == {"mlp"}


def test_whole_writes_its_result_without_out(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept, and said where at the start: in the user's cache, not the working folder (issue 33: 8)."""
    import atomdd.cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(atomdd.cli, "WHOLE_CACHE", tmp_path / "cache" / "whole")
    argv = [
        "evaluate",
        "--whole",
        "--dataset",
        "digits",
        "--models",
        "mlp",
        "--epochs",
        "1",
        "--repeats",
        "1",
    ]
    code, err = _cli(capsys, *argv)
    kept = tmp_path / "cache" / "whole" / "digits"
    assert code == 0 and err.index(f"kept in {kept}") < err.index(f"results in {kept}/eval.json")
    saved = json.loads((kept / "eval.json").read_text())
    assert saved["set"]["kind"] == "whole" and len(saved["models"]["mlp"]["runs"]) == 1
    assert len((kept / "eval.jsonl").read_text().splitlines()) == 1 and sorted(tmp_path.iterdir()) == [
        tmp_path / "cache"
    ]


# --------------------------------------------------------------------------------------------------
# case 3: a write error is a clear message naming the path (exit 2), the previous files intact


def _failing_replace(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    import errno as _errno

    import atomdd.io as io

    honest = os.replace

    def replace_(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(code, os.strerror(code), str(src))
        return honest(src, dst, *args, **kwargs)

    assert code in (_errno.ENOSPC, _errno.EROFS)
    monkeypatch.setattr(io.os, "replace", replace_)


def test_write_errors_name_the_path_and_keep_what_was_there(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    import errno

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = _cli(capsys, "distill", *_TINY, "--iterations", "1", "--out", str(blocker / "run"))
    assert code == 2 and f"cannot write {blocker / 'run'}" in err and "not a folder" in err
    assert "Traceback" not in err

    folder = tmp_path / "set"
    _digits_set(digits, torch.arange(10)).save(folder)
    argv = ["evaluate", str(folder), "--models", "convnet(width=8)", "--epochs", "1", "--repeats", "2"]
    assert _cli(capsys, *argv)[0] == 0
    before = (folder / "eval.json").read_bytes()
    with monkeypatch.context() as m:
        _failing_replace(m, "eval.json", errno.ENOSPC)  # the disk fills up at the end
        from atomdd.cli import main

        code = main([*argv, "--seed", "1"])
        out, err = capsys.readouterr()
    assert code == 2 and f"cannot write {folder / 'eval.json'}: No space left on device" in err
    assert "the disk is full" in err and "Traceback" not in err
    assert "convnet(width=8)" in out  # the table of what was trained is printed all the same
    assert (folder / "eval.json").read_bytes() == before  # the previous file intact
    assert not list(folder.glob(".*.tmp"))
    rows = (folder / "eval.jsonl").read_text().splitlines()
    assert len(rows) == 4  # 2 runs of seed 0, 2 of seed 1: kept, reused by the next run
    assert _cli(capsys, *argv, "--seed", "1")[0] == 0

    with monkeypatch.context() as m:
        _failing_replace(m, "synthetic.safetensors", errno.EROFS)
        code, err = _cli(capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "c"))
    assert code == 2 and f"cannot write {tmp_path / 'c' / 'synthetic.safetensors'}" in err
    assert "read-only" in err and "Traceback" not in err


# ==================================================================================================
# Issue 29: faults a hostile but fair user found. Each test below failed on main before its fix
# (the lock: tests/test_lock.py; signals: tests/test_signals.py; torchrun's SIGTERM: tests/test_launch.py;
# every model's options: tests/test_models.py).

_RUN = dict(width=8, batch_real=8, checkpoint_every=1, log_every=1)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --------------------------------------------------------------------------------------------------
# 29.3: a damaged journal (metrics.jsonl, eval.jsonl, NAS results.jsonl) is skipped line by line


def test_a_damaged_journal_is_skipped_with_one_warning_and_the_rest_reused(
    capsys, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    """Before: `UnicodeDecodeError` tracebacks (exit 1) from every later run."""
    damage = b"\xff\n" + b'{"run": "zero"}\n' + b"[1]\n"  # bad bytes, a wrong shape, not an object

    folder = tmp_path / "set"
    _digits_set(digits, torch.arange(10)).save(folder)
    argv = ["evaluate", str(folder), "--models", "mlp(width=8)", "--epochs", "1"]
    assert _cli(capsys, *argv, "--repeats", "2")[0] == 0
    with open(folder / "eval.jsonl", "ab") as f:
        f.write(damage + b'{"set": "torn')
    honest, trained = evaluation.train_models, []
    monkeypatch.setattr(evaluation, "train_models", lambda *a, **k: trained.extend(a[5]) or honest(*a, **k))
    assert _cli(capsys, *argv, "--repeats", "3")[0] == 0
    assert trained == [2]  # runs 0 and 1 reused from the damaged journal
    (warning,) = _warnings(caplog, "skipped")  # one, though the journal is read once per model and more
    assert warning.startswith(f"{folder / 'eval.jsonl'}: skipped damaged line(s) 3, 4, 5, 6 (not a row")

    run = tmp_path / "run"
    distill_args = ["distill", *_TINY, "--checkpoint-every", "1", "--log-every", "1", "--out", str(run)]
    assert _cli(capsys, *distill_args, "--iterations", "2")[0] == 0
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(damage)
    assert _cli(capsys, *distill_args, "--iterations", "4", "--resume")[0] == 0
    assert _warnings(caplog, "metrics.jsonl: skipped damaged line(s) 3, 4, 5")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the damaged lines are gone, the run reads as one

    nas = tmp_path / "nas"
    (tmp_path / "space.txt").write_text("convnet(depth=1,width=8)\n")
    search = ["nas", "--dataset", "digits", "--proxies", "random", "--space", str(tmp_path / "space.txt")]
    search += ["--epochs", "1", "--truth-epochs", "1", "--dsa", "none", "--quiet", "--out", str(nas)]
    assert _cli(capsys, *search)[0] == 0
    with open(nas / "results.jsonl", "ab") as f:
        f.write(damage)
    assert _cli(capsys, *search)[0] == 0
    assert _warnings(caplog, "results.jsonl: skipped damaged line(s) 2, 3, 4")
    assert len((nas / "results.jsonl").read_bytes().splitlines()) == 4  # nothing trained again


def test_a_folder_where_a_journal_should_be_is_a_message(capsys, tmp_path: Path) -> None:
    """`mkdir RUN_DIR/metrics.jsonl`: before, an `IsADirectoryError` traceback."""
    run = tmp_path / "run"
    distill_args = ["distill", *_TINY, "--out", str(run)]
    assert _cli(capsys, *distill_args, "--iterations", "2")[0] == 0
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    code, err = _cli(capsys, *distill_args, "--iterations", "3", "--resume")
    assert code == 2 and f"cannot read the journal {run / 'metrics.jsonl'}: Is a directory" in err
    (run / "eval.jsonl").mkdir()
    code, err = _cli(
        capsys, "evaluate", str(run), "--models", "mlp(width=8)", "--epochs", "1", "--repeats", "1"
    )
    assert code == 2 and f"cannot read the journal {run / 'eval.jsonl'}: Is a directory" in err


# --------------------------------------------------------------------------------------------------
# 29.4: read-only data: a decode cache elsewhere, or decoded in memory; an empty read-only --out


@contextlib.contextmanager
def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path):
    """`folder` as on a read-only mount: every write under it fails with EROFS, the kernel's answer
    (the open for writing, a new folder, a removal)."""
    import errno

    honest_open, honest_mkdir, honest_unlink = os.open, os.mkdir, os.unlink

    def refuse(path) -> None:
        if Path(os.path.abspath(path)).is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return honest_open(path, flags, *args, **kwargs)

    def mkdir_(path, *args, **kwargs):
        if not os.path.isdir(path):
            refuse(path)
        return honest_mkdir(path, *args, **kwargs)

    def unlink_(path, *args, **kwargs):
        refuse(path)
        return honest_unlink(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "open", open_)
        m.setattr(os, "mkdir", mkdir_)
        m.setattr(os, "unlink", unlink_)
        yield


def test_read_only_data_takes_its_cache_elsewhere_or_decodes_in_memory(
    capsys, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "cannot write RO_DIR/atomdd-cache-32px.safetensors …", no way to put it elsewhere."""
    from PIL import Image
    from test_data import make_tinyimagenet

    from atomdd.data import files
    from atomdd.data.cache import CACHE_ENV, cache_folder

    tree = tmp_path / "tree"
    for c, color in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        for i in range(3):
            (tree / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), color).save(tree / c / f"{i}.png")
    tiny = make_tinyimagenet(tmp_path / "data")
    cache = tmp_path / "cache"
    with _read_only(monkeypatch, tree), _read_only(monkeypatch, tiny):
        decoded = load_dataset("imagefolder", tree)
        assert _warnings(caplog, "decoded in memory and will be decoded again next time: give --cache-dir")
        assert not list(tree.glob("*.safetensors"))
        assert load_dataset("tinyimagenet", tmp_path / "data").num_classes == 3
        assert _warnings(caplog, f"cannot write {tiny / 'atomdd-cache.safetensors'}: Read-only file system")

        with cache_folder(cache):  # the setting (`--cache-dir`)
            assert load_dataset("imagefolder", tree).content_hash == decoded.content_hash
        (written,) = cache.glob("tree-*-atomdd-cache-32px.safetensors")
        monkeypatch.setenv(CACHE_ENV, str(cache))  # the environment variable
        with monkeypatch.context() as m:
            m.setattr(files, "_decode_image", lambda *a: pytest.fail("decoded although cached"))
            assert load_dataset("imagefolder", tree).content_hash == decoded.content_hash
        load_dataset("tinyimagenet", tmp_path / "data")
        assert len(list(cache.glob("tiny-imagenet-200-*-atomdd-cache.safetensors"))) == 1
        monkeypatch.delenv(CACHE_ENV)

        other = tmp_path / "other-cache"
        code = _cli(capsys, "datasets", "imagefolder", "--data-root", str(tree), "--cache-dir", str(other))[0]
        assert code == 0 and list(other.glob("tree-*.safetensors")) and CACHE_ENV not in os.environ
    assert written.exists()


def test_distill_into_an_empty_read_only_folder_is_a_message(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an `OSError [Errno 30]` traceback from removing a metrics file that was not there."""
    out = tmp_path / "ro"
    out.mkdir()
    with _read_only(monkeypatch, out):
        code, err = _cli(capsys, "distill", *_TINY, "--iterations", "1", "--out", str(out))
    assert code == 2 and f"cannot write {out}" in err and "Read-only file system" in err
    assert "Traceback" not in err and not list(out.iterdir())


# --------------------------------------------------------------------------------------------------
# 29.5: model options out of range, non-finite, or past the memory bound (every model:
# tests/test_models.py::test_every_option_of_every_model_is_checked)


@pytest.mark.parametrize(
    "model, message",
    [
        ("convnet(width=0)", "width=0 is out of range; choose 1–4096"),
        ("convnet(width=-4)", "width=-4 is out of range"),
        ("convnet(width=100000000)", "width=100000000 is out of range"),
        ("vit(mlp_ratio=nan)", "mlp_ratio=nan is not a finite number"),
        ("mlp(width=65536)", r"would hold 4\.3e\+09 parameters \(17\.2 GB of float32 weights\) for 1×8×8"),
    ],
)
def test_model_options_are_checked_before_anything_runs(capsys, tmp_path: Path, model, message) -> None:
    """Before: ZeroDivisionError, RuntimeError (a negative dimension), an attempt to allocate
    3.6e17 bytes, ValueError."""
    folder = tmp_path / "set"
    _digits_set_saved = _cli(capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--out", str(folder))
    assert _digits_set_saved[0] == 0
    code, err = _cli(capsys, "evaluate", str(folder), "--models", model, "--epochs", "1", "--repeats", "1")
    assert code == 2 and re.search(message, err) and "Traceback" not in err, err
    code, err = _cli(
        capsys, "distill", *_TINY[:-5], "--model", model, "--iterations", "1", "--out", str(tmp_path / "r")
    )
    assert code == 2 and re.search(message, err), err


# --------------------------------------------------------------------------------------------------
# 29.6: a config file's values of the wrong type


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.toml", "models = 5\n", "models=5: expected model references"),
        ("c.yaml", "models: [convnet, 7]\n", "model 7: write a name"),
        ("c.yaml", "repeats: true\n", "repeats=True: expected int"),
    ],
)
def test_evaluate_config_values_of_the_wrong_type(capsys, tmp_path: Path, name, content, message) -> None:
    """Before: `TypeError` tracebacks; `repeats: true` meant one repeat."""
    (tmp_path / name).write_text(content)
    folder = tmp_path / "set"
    assert _cli(capsys, "coreset", "--dataset", "digits", "--ipc", "1", "--out", str(folder))[0] == 0
    code, err = _cli(capsys, "evaluate", str(folder), "--config", str(tmp_path / name), "--epochs", "1")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_boolean_is_no_number_in_a_config_file(capsys, tmp_path: Path) -> None:
    """Before: `iterations: true` ran one step (while `ipc: true` was refused)."""
    for content, message in (
        ("iterations: true\n", "iterations=True: expected int"),
        ("lr_img: false\n", "lr_img=False: expected float"),
        ("zca: 5\n", "zca=5: expected bool"),
        ("dsa: [color]\n", "dsa=['color']: expected str"),
    ):
        (tmp_path / "c.yaml").write_text(content)
        code, err = _cli(
            capsys, "distill", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")
        )
        assert code == 2 and message in err, err
        assert not (tmp_path / "r" / "run.json").exists()
    (tmp_path / "c.yaml").write_text("ipc: true\n")
    code, err = _cli(
        capsys,
        "coreset",
        "--dataset",
        "digits",
        "--config",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "c"),
    )
    assert code == 2 and "ipc=True: expected int" in err


# --------------------------------------------------------------------------------------------------
# 29.7: a run folder whose run.json or eval.json is not what atomdd wrote


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("run.json", "[1]", "it is list, not a mapping"),
        ("run.json", '{"config": "x"}', "config is str, not a mapping"),
        ("run.json", '{"config": {"ipc": "3"}}', "config.ipc is str '3', not int"),
        ("run.json", '{"git": {"dirty": true}}', "git.commit is missing"),
        (
            "eval.json",
            '{"models": {"mlp": {"runs": [], "mean": 1, "std": 0}}, "config": {"epochs": 1}}',
            "models.mlp.runs is not a non-empty list",
        ),
        (
            "eval.json",
            '{"models": {"mlp": {"runs": [NaN], "mean": 1, "std": 0}}, "config": {"epochs": 1}}',
            "models.mlp.runs is nan, not a finite number",
        ),
    ],
)
def test_report_of_a_malformed_run_folder_names_the_key(
    capsys, tmp_path: Path, file, content, message
) -> None:
    """Before: `AttributeError` tracebacks (the missing commit and the NaN accuracy: found by fuzzing)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / file).write_text(content)
    code, err = _cli(capsys, "report", str(run), "--out", str(tmp_path / "page"))
    assert code == 2 and f"{run / file} is not a record atomdd wrote ({message})" in err, err
    assert "Traceback" not in err


def test_eval_json_with_a_damaged_entry_is_merged_found_by_fuzzing(tmp_path: Path, digits) -> None:
    """Before: `AttributeError` when a model's entry under "results" was not a mapping."""
    import atomdd.evaluate as ev

    syn = _digits_set(digits, torch.arange(10))
    cfg = ev.EvalConfig(epochs=1, repeats=1)
    ev.evaluate_set(syn, "mlp(width=8)", cfg, out_dir=tmp_path, dataset=digits)
    saved = json.loads((tmp_path / "eval.json").read_text())
    (protocol,) = saved["results"]
    saved["results"][protocol]["convnet"] = 5  # another model's entry
    (tmp_path / "eval.json").write_text(json.dumps(saved))
    again = ev.evaluate_set(syn, "mlp(width=8)", cfg, out_dir=tmp_path, dataset=digits)
    assert json.loads((tmp_path / "eval.json").read_text())["models"] == json.loads(
        json.dumps(again["models"])
    )


# --------------------------------------------------------------------------------------------------
# 29.8: a checkpoint that cannot be this run's


def _forge(checkpoint: Path, **meta: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from atomdd.io import save_safetensors

    with safe_open(str(checkpoint), framework="pt") as f:
        old = f.metadata()
    save_safetensors(checkpoint, load_file(str(checkpoint)), old | meta)


def test_impossible_checkpoints_are_refused(capsys, tmp_path: Path) -> None:
    """Before: step -5 resumed into 65 steps and another set; step 99999 with --iterations 6 wrote
    "done" at step 99999 with the pixels of step 4; --resume --iterations 2 on a step-4 checkpoint
    was accepted."""
    run = tmp_path / "run"
    args = ["distill", *_TINY, "--out", str(run)]
    assert _cli(capsys, *args, "--iterations", "4")[0] == 0
    code, err = _cli(capsys, *args, "--iterations", "2", "--resume")
    assert code == 2 and "is at step 4, past iterations=2; resume with --iterations 4 or more" in err
    _forge(run / "checkpoint.safetensors", step="99999")
    code, err = _cli(capsys, *args, "--iterations", "6", "--resume")
    assert code == 2 and "is at step 99999, past iterations=6" in err
    _forge(run / "checkpoint.safetensors", step="-5")
    code, err = _cli(capsys, *args, "--iterations", "6", "--resume")
    assert code == 2 and "is corrupt or not an atomdd checkpoint: its step is -5" in err
    assert json.loads((run / "run.json").read_text())["step"] == 4  # nothing was recorded

    from safetensors.torch import load_file

    from atomdd.io import save_safetensors

    _forge(run / "checkpoint.safetensors", step="4")
    tensors = load_file(str(run / "checkpoint.safetensors"))
    bad_states = (
        ("syn", tensors["syn"][:3]),
        ("cpu_rng", torch.zeros_like(tensors["cpu_rng"])),
        ("cuda_rng", torch.zeros(2, 3)),  # a GPU run's state, damaged: refused on any device
    )
    for name, bad in bad_states:
        save_safetensors(run / "checkpoint.safetensors", tensors | {name: bad}, {"step": "4", "config": "{}"})
        code, err = _cli(capsys, *args, "--iterations", "6", "--resume")
        assert code == 2 and "is corrupt or not an atomdd checkpoint" in err and name in err, err


# --------------------------------------------------------------------------------------------------
# 29.9: a failure that cannot be recorded says so; start-or-continue; a killed rank's finished runs


def test_a_full_disk_at_a_checkpoint_says_run_json_could_not_record_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the failure to write "failed" into run.json was silent, and it still said "running"."""
    import errno

    import atomdd.io as io
    from atomdd.api import distill
    from atomdd.errors import WriteError

    honest, full = os.replace, []

    def replace_(src, dst, *args, **kwargs):  # the disk fills up at the first checkpoint
        full.extend([True] if Path(dst).name == "checkpoint.safetensors" else [])
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return honest(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(io.os, "replace", replace_)
        with pytest.raises(WriteError, match="No space left on device"):
            distill("digits", 1, "dm", out=tmp_path, iterations=3, **_RUN)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    (warning,) = _warnings(caplog, "could not record")
    assert f"could not record the failed run in {tmp_path / 'run.json'} (cannot write" in warning
    assert 'it may still say "running"' in warning


def test_resume_or_start_starts_then_continues_bitwise(tmp_path: Path) -> None:
    """`distill --resume-or-start` (`resume="auto"`): a retry loop's one command."""
    from atomdd import distill

    whole = distill("digits", 1, "dm", iterations=4, **_RUN)
    out = tmp_path / "run"
    distill("digits", 1, "dm", out=out, resume="auto", iterations=2, **_RUN)  # no checkpoint: starts
    resumed = distill("digits", 1, "dm", out=out, resume="auto", iterations=4, **_RUN)  # continues
    assert torch.equal(whole.images, resumed.images)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_rank_killed_in_a_torchrun_evaluation_leaves_every_finished_run(tmp_path: Path, digits) -> None:
    """Rank 1 finishes one run, then is killed: rank 0's runs and rank 1's finished one are in
    eval.jsonl, and the rerun trains only the rest. Before: no row at all, the rerun started over."""
    from ranks import launch

    folder = tmp_path / "set"
    _digits_set(digits, torch.arange(10)).save(folder)
    job = {
        "kind": "evaluate",
        "set": str(folder),
        "models": ["mlp(width=8)"],
        "config": {"epochs": 1, "repeats": 6, "batch_size": 16, "device": "cpu"},
        "slow": {"rank": 1, "kill_after": 1},
        "out": str(folder),
    }
    (rc0, err0, _), (rc1, _, _) = launch(2, job, tmp_path / "r", collective_timeout=5)[0]
    assert rc1 == -9 and rc0 != 0 and "rank 1 has not answered" in err0
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in rows) == [0, 1, 2, 4]  # rank 0's 0, 2, 4; rank 1's first, 1
    results, _ = launch(1, job | {"slow": None}, tmp_path / "again")
    ((rc, err, report),) = results
    assert rc == 0, err
    again = [json.loads(line)["run"] for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert again[len(rows) :] == [3, 5] and len(report["models"]["mlp(width=8)"]["runs"]) == 6
