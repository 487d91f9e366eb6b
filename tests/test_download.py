"""Verified downloads against a loopback HTTP server, safe unpacking, and `locate`."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import socket
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from atomdd.data import DATASETS, DatasetSpec, get_spec, load_dataset
from atomdd.data.download import download, extract, fetch_dataset, locate
from atomdd.data.files import require_files
from atomdd.errors import AtomddError


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def toy_spec(url: str, data: bytes, extract_it: bool, filename: str) -> DatasetSpec:
    return DatasetSpec(
        name="toy",
        description="a toy",
        folder="toyset",
        reader=lambda p: None,
        files=("a.txt", "sub/b.txt"),
        downloads=({"url": url + filename, "md5": md5(data), "filename": filename, "extract": extract_it},),
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith("."))


# --------------------------------------------------------------------------------------------------
# single downloads


def test_download_good_file(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    data = bytes(range(256)) * 5000  # over one streaming block
    (served / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    download(url + "blob.bin", dest, md5(data))
    assert dest.read_bytes() == data and leftovers(dest.parent) == []


def test_download_wrong_md5_keeps_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    (served / "blob.bin").write_bytes(b"tampered")
    out = tmp_path / "out"
    with pytest.raises(AtomddError) as e:
        download(url + "blob.bin", out / "blob.bin", "0" * 32)
    msg = str(e.value)
    assert f"has md5 {md5(b'tampered')}, expected {'0' * 32}" in msg and "nothing was kept" in msg
    assert list(out.iterdir()) == []  # no file, no temporary file


def test_download_http_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(AtomddError, match=r"download failed: .*/missing\.bin: HTTP 404 .* by hand"):
        download(url + "missing.bin", tmp_path / "out" / "missing.bin", "0" * 32)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.gz"
    with pytest.raises(AtomddError) as e:
        download(url, tmp_path / "d" / "x.gz", "0" * 32)
    msg = str(e.value)
    assert f"download failed: {url}" in msg and "refused" in msg.lower()
    assert f"put the file x.gz (md5 {'0' * 32}) in {tmp_path / 'd'} by hand" in msg
    assert leftovers(tmp_path) == []


def test_download_timeout(tmp_path: Path) -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(AtomddError, match="download failed: .*timed out"):
            download(f"http://127.0.0.1:{s.getsockname()[1]}/x", tmp_path / "x", "0" * 32, timeout=0.3)


# --------------------------------------------------------------------------------------------------
# whole datasets


def test_fetch_mnist_files_then_read(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(12) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(4),
    }
    downloads = []
    for name, array in arrays.items():
        data = idx_gz(array)
        (served / f"{name}.gz").write_bytes(data)
        downloads.append({"url": f"{url}{name}.gz", "md5": md5(data), "filename": f"{name}.gz"})
    spec = dataclasses.replace(get_spec("mnist"), downloads=tuple(downloads))
    path = spec.path(tmp_path)
    fetch_dataset(spec, path)
    ds = spec.reader(path)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_labels.tolist() == [0, 1, 2, 3]
    for f in served.iterdir():
        f.unlink()
    fetch_dataset(spec, path)  # complete: nothing is fetched again


def test_fetch_skips_files_present_uncompressed(tmp_path: Path) -> None:
    item = {"url": "http://127.0.0.1:9/a.gz", "md5": "0" * 32, "filename": "train-images-idx3-ubyte.gz"}
    spec = dataclasses.replace(get_spec("mnist"), downloads=(item,))
    path = tmp_path / "MNIST" / "raw"
    path.mkdir(parents=True)
    (path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(
        AtomddError, match="missing train-labels-idx1-ubyte"
    ):  # nothing downloaded, still incomplete
        fetch_dataset(spec, path)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_fetch_and_extract_archive(server: tuple[str, Path], tmp_path: Path, kind: str) -> None:
    url, served = server
    members = {"toyset/a.txt": b"A", "toyset/sub/b.txt": b"B"}
    data = tar_gz(members) if kind == "tar.gz" else zip_bytes(members)
    (served / f"toy.{kind}").write_bytes(data)
    spec = toy_spec(url, data, True, f"toy.{kind}")
    root = tmp_path / "root"
    fetch_dataset(spec, spec.path(root))
    assert (root / "toyset" / "sub" / "b.txt").read_bytes() == b"B" and (root / f"toy.{kind}").exists()
    assert leftovers(root) == []


def test_fetch_existing_archive_is_verified(tmp_path: Path) -> None:
    spec = toy_spec("http://127.0.0.1:9/", b"official bytes", True, "toy.tar.gz")
    (tmp_path / "toy.tar.gz").write_bytes(b"something else")
    with pytest.raises(AtomddError, match=r"toy\.tar\.gz has md5 .*expected .*delete it"):
        fetch_dataset(spec, spec.path(tmp_path))


def _read_toy(path: Path) -> list[Path]:
    require_files("toy", path)
    return sorted(path.rglob("*.txt"))


def test_load_dataset_download_flag(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = server
    data = zip_bytes({"toyset/a.txt": b"A", "toyset/sub/b.txt": b"B"})
    (served / "toy.zip").write_bytes(data)
    monkeypatch.setitem(
        DATASETS, "toy", dataclasses.replace(toy_spec(url, data, True, "toy.zip"), reader=_read_toy)
    )
    with pytest.raises(AtomddError, match=r"toy: missing a\.txt, sub/b\.txt in .*toyset\. .*--download"):
        load_dataset("toy", tmp_path)
    assert [f.name for f in load_dataset("toy", tmp_path, download=True)] == ["a.txt", "b.txt"]


def test_not_downloadable(tmp_path: Path) -> None:
    with pytest.raises(AtomddError, match="cannot be downloaded"):
        fetch_dataset(get_spec("imagefolder"), tmp_path / "nope")


# --------------------------------------------------------------------------------------------------
# unsafe archives


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/atomdd-evil.txt", "toyset/../../evil.txt"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_extract_refuses_escaping_members(tmp_path: Path, name: str, kind: str) -> None:
    archive = tmp_path / "dl" / f"bad.{kind}"
    archive.parent.mkdir()
    members = {"toyset/ok.txt": b"ok", name: b"evil"}
    archive.write_bytes(tar_gz(members) if kind == "tar.gz" else zip_bytes(members))
    into = tmp_path / "dl" / "root"
    with pytest.raises(AtomddError, match="refused to unpack .*points outside the target folder"):
        extract(archive, into)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dl" / "evil.txt").exists()
    assert not Path("/tmp/atomdd-evil.txt").exists() and list(into.iterdir()) == []


def test_extract_refuses_links_and_corrupt_archives(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("toyset/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "link.tar.gz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(AtomddError, match="a link or device"):
        extract(archive, tmp_path / "root")
    archive.write_bytes(tar_gz({"toyset/a.txt": b"A" * 1000})[:40])
    with pytest.raises(AtomddError, match="truncated or corrupt"):
        extract(archive, tmp_path / "root")


# --------------------------------------------------------------------------------------------------
# locate


def test_locate(tmp_path: Path) -> None:
    info = locate("mnist", tmp_path)
    assert (
        info["found"] is False
        and info["downloadable"] is True
        and info["path"] == str(tmp_path / "MNIST/raw")
    )
    assert info["classes"] == 10 and info["channels"] == 1 and info["image_size"] == 28
    assert "t10k-labels-idx1-ubyte" in info["missing"]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in get_spec("mnist").files:
        (raw / f"{name}.gz").write_bytes(b"")  # existence only: locate reads nothing
    assert locate("mnist", tmp_path)["found"] is True
    assert locate("digits", tmp_path)["found"] is True and locate("digits")["downloadable"] is False
    assert locate("imagefolder", tmp_path / "imgs")["found"] is False
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    assert locate("imagefolder", tmp_path / "imgs")["found"] is False  # a class folder, no image yet
    (tmp_path / "imgs" / "cat" / "0.png").write_bytes(b"")  # names only: locate reads nothing
    assert locate("imagefolder", tmp_path / "imgs")["found"] is True
    with pytest.raises(AtomddError, match="valid datasets: cifar10"):
        locate("nope", tmp_path)
