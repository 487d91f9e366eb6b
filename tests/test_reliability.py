"""Reliability cases of issue 17: each test names the case it covers and failed before its fix."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from atomdd.data import Dataset, load_dataset
from atomdd.data.readers import read_idx
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
