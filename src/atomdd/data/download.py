"""Verified downloads and the cheap "is it there?" check behind `atomdd datasets`.

A download streams to a temporary file beside its target and is renamed into place only when its
md5 matches the published one, so an interrupted or tampered download never looks like data.
Archives are unpacked into a temporary folder first, refusing any member that would land outside it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from atomdd import __version__
from atomdd.data import DatasetSpec, get_spec
from atomdd.data.files import missing_files_error
from atomdd.errors import AtomddError
from atomdd.io import atomic_path, pid_alive

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def locate(name: str, data_root: str | os.PathLike | None = None) -> dict:
    """Where a dataset is expected and whether its files are there, without reading it."""
    spec = get_spec(name)
    path = spec.path(data_root)
    if spec.embedded:
        found, missing = True, []
    elif spec.files:
        missing = spec.missing(path)
        found = path.is_dir() and not missing
    else:  # a free-form tree: found once a class folder holds an image (or train/ one does)
        missing = []
        found = path.is_dir() and _holds_class_images(path)
    return {
        "name": spec.name,
        "found": found,
        "path": "bundled with an installed package" if spec.embedded else str(path),
        "description": spec.description,
        "classes": spec.num_classes,
        "channels": spec.channels,
        "image_size": spec.image_size,
        "downloadable": bool(spec.downloads),
        "missing": missing,
    }


def _holds_class_images(root: Path) -> bool:
    """Whether `root` is an image-folder tree: a class sub-folder (or one inside train/) holding an
    image file; a data root of other datasets' folders is not. Reads names only."""
    from atomdd.data.imagefolder import IMAGE_EXTENSIONS

    def folders(p: Path) -> list[Path]:
        return [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]

    for tops in (folders(root), folders(root / "train") if (root / "train").is_dir() else []):
        for d in tops:
            if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir() if f.is_file()):
                return True
    return False


def fetch_dataset(spec: DatasetSpec, path: str | os.PathLike, timeout: float = 60.0) -> None:
    """Download (md5-checked) and unpack whatever `spec` needs that `path` lacks."""
    path = Path(path)
    if path.is_dir() and not spec.missing(path):
        return
    if not spec.downloads:
        raise AtomddError(f"{spec.name} cannot be downloaded by atomdd; put its files in {path}")
    root = path
    for _ in Path(spec.folder).parts:  # archives hold the dataset's folder, so they unpack in the root
        root = root.parent
    for item in spec.downloads:
        if item.get("extract"):
            archive = root / item["filename"]
            if archive.exists():
                if (got := md5_file(archive)) != item["md5"]:
                    raise AtomddError(
                        f"{archive} has md5 {got}, expected {item['md5']}; delete it and try again"
                    )
            else:
                download(item["url"], archive, item["md5"], timeout)
            extract(archive, root)
        else:
            target = path / item["filename"]
            if not (target.exists() or target.with_name(target.name.removesuffix(".gz")).exists()):
                download(item["url"], target, item["md5"], timeout)
    if missing := spec.missing(path):
        raise missing_files_error(spec, path, missing)


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> None:
    """Stream `url` to `dest`, keeping it only if its md5 is `md5`."""
    log.info("downloading %s", url)
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": f"atomdd/{__version__}"})
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                while block := response.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
            if (got := digest.hexdigest()) != md5:
                raise AtomddError(
                    f"download of {url} has md5 {got}, expected {md5}; nothing was kept. The server may "
                    f"have sent an error page or a changed file: retry, or put a good copy at {dest} by hand."
                )
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = (
            f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        )
        raise AtomddError(
            f"download failed: {url}: {reason}. Without network access, put the file {dest.name} "
            f"(md5 {md5}) in {dest.parent} by hand and run again."
        ) from None


def _check_member(archive: Path, name: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise AtomddError(
            f"{archive}: refused to unpack {name!r}, which points outside the target folder; "
            "this is not the official archive, delete it"
        )


_UNPACK = re.compile(r"^\.atomdd-unpack-(\d{1,10})-[a-z0-9_]+$")


def _remove_stale_unpacks(into: Path) -> None:
    """Remove the unpack folders of killed extractions (named by the pid of a process now gone)."""
    for entry in os.scandir(into):
        if (
            (m := _UNPACK.match(entry.name))
            and entry.is_dir(follow_symlinks=False)
            and not pid_alive(int(m[1]))
        ):
            shutil.rmtree(entry.path, ignore_errors=True)


def extract(archive: Path, into: Path) -> None:
    """Unpack a .tar(.gz) or .zip into `into`, via a temporary folder, refusing unsafe members."""
    into.mkdir(parents=True, exist_ok=True)
    _remove_stale_unpacks(into)
    with tempfile.TemporaryDirectory(dir=into, prefix=f".atomdd-unpack-{os.getpid()}-") as tmp:
        try:
            if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
                with tarfile.open(archive) as tar:
                    members = tar.getmembers()
                    for m in members:
                        _check_member(archive, m.name)
                        if not (m.isfile() or m.isdir()):
                            raise AtomddError(f"{archive}: refused to unpack {m.name!r}, a link or device")
                    tar.extractall(tmp, members=members, filter="data")
            elif archive.suffix == ".zip":
                with zipfile.ZipFile(archive) as zf:
                    for name in zf.namelist():
                        _check_member(archive, name)
                    zf.extractall(tmp)
            else:
                raise AtomddError(f"{archive}: cannot unpack, not a .tar.gz, .tar or .zip file")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
            raise AtomddError(
                f"{archive} is truncated or corrupt ({e}); delete it and download it again"
            ) from None
        for dirpath, _, filenames in os.walk(tmp):
            rel = Path(dirpath).relative_to(tmp)
            (into / rel).mkdir(parents=True, exist_ok=True)
            for f in filenames:
                os.replace(Path(dirpath) / f, into / rel / f)
