"""Atomic file writes and the provenance every run records beside its output.

Every file a run writes goes to a temporary sibling first and is renamed into place, so a crash
leaves either the old file or the new one, never half of one. The temporary sibling is named
`.<name>.atomdd-<pid>-<random>.tmp`; one left behind by a killed writer (its pid no longer alive) is
removed by the next write into that folder. New files get the usual mode (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

from atomdd.errors import AtomddError, WriteError

log = logging.getLogger(__name__)

_TMP = re.compile(r"^\.(?P<name>.+)\.atomdd-(?P<pid>\d{1,10})-[0-9a-f]{8}\.tmp$")
# what `tempfile.mkstemp` named them before the pid was part of the name
_OLD_TMP_CHARS = re.compile(r"^[a-z0-9_]{8}$")
OLD_TMP_AGE = 3600.0  # seconds: a pid-less temp file this old belongs to no live writer


def pid_alive(pid: int) -> bool:
    """Whether a process of that id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def temp_name(path: str | os.PathLike) -> Path:
    """A fresh temporary sibling of `path`: `.<name>.atomdd-<pid>-<random>.tmp`."""
    path = Path(path)
    return path.with_name(f".{path.name}.atomdd-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files of killed atomic writes in `folder`.

    Only names this module makes are touched: `.<target>.atomdd-<pid>-<hex>.tmp` whose pid is not a
    live process and, for the target `name` if given, the pid-less `.<name>.XXXXXXXX.tmp` of earlier
    versions once it is more than an hour old.
    Returns the removed paths; a file that cannot be removed is left alone.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        n = entry.name
        if not (n.startswith(".") and n.endswith(".tmp")):
            continue
        if m := _TMP.match(n):
            stale = not pid_alive(int(m["pid"]))
        elif name is not None and n.startswith(f".{name}.") and _OLD_TMP_CHARS.match(n[len(name) + 2 : -4]):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > OLD_TMP_AGE
            except OSError:
                stale = False
        else:
            continue
        try:
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


_WHY = {
    errno.ENOSPC: "the disk is full; free some space and run again",
    errno.EDQUOT: "the disk quota is used up; free some space and run again",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "no permission to write there; choose another folder",
    errno.EPERM: "no permission to write there; choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """The message for a failed write: the path, the system's reason, what to do."""
    reason = error.strerror or type(error).__name__
    hint = _WHY.get(error.errno or 0, "")
    return WriteError(
        f"cannot write {path}: {reason}{f' ({hint})' if hint else ''}; the previous file, if any, is "
        "left as it was",
        Path(path),
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`_atomic_path`, with every OS error of the write turned into a `WriteError` naming `path`."""
    try:
        with _atomic_path(path) as tmp:
            yield tmp
    except (URLError, ConnectionError, TimeoutError, socket.gaierror):
        raise  # a download's network error inside the block is not a write error
    except OSError as e:
        raise write_error(path, e) from None


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file exists (empty, mode 0666 less the umask) when the block starts; temporary
    files of killed writers in the same folder are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp_path = temp_name(path)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode())


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one line; a torn last line after a crash is skipped by `read_jsonl`, and the next
    line starts on a line of its own."""
    try:
        with open(path, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            torn = size > 0 and f.seek(size - 1) >= 0 and f.read(1) != b"\n"
            f.write((("\n" if torn else "") + json.dumps(obj, default=_jsonable) + "\n").encode())
    except OSError as e:
        raise write_error(path, e) from None


def user_cache(*parts: str) -> Path:
    """atomdd's folder in the user's cache, ~/.cache/atomdd, joined with `parts`: the datasets, the
    built kernel, `evaluate --whole`'s results, each under its own name."""
    return Path.home().joinpath(".cache", "atomdd", *parts)


def make_folder(path: str | os.PathLike) -> Path:
    """`mkdir -p`, a failure a `WriteError` naming the folder."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return Path(path)


# The shape of a record read back (a journal's row, run.json, eval.json), as `mismatch` checks it: a
# type; a tuple of alternatives (a bool is never a number); a list of one shape (a non-empty list of
# such values); a dict of key → shape, where "key?" may be absent and "*" stands for every key.
Shape = Any
NUMBER = (int, float)
_warned: set[tuple[str, tuple[int, ...]]] = set()


def mismatch(value: Any, shape: Shape, where: str = "") -> str | None:
    """Where `value` departs from `shape`, in words ("config.ipc is str '3', not int"); None if it fits."""
    at = where.removesuffix(".") or "it"
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{at} is {type(value).__name__}, not a mapping"
        for key, inner in shape.items():
            name = key.removesuffix("?")
            if key == "*":
                items = list(value.items())
            elif name in value:
                items = [(name, value[name])]
            elif key.endswith("?"):
                continue
            else:
                return f"{where}{name} is missing"
            for k, v in items:
                if why := mismatch(v, inner, f"{where}{k}."):
                    return why
        return None
    if isinstance(shape, list):
        if not isinstance(value, list) or not value:
            return f"{at} is not a non-empty list"
        return next((why for v in value if (why := mismatch(v, shape[0], where))), None)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if any(isinstance(k, (dict, list)) for k in kinds):  # alternatives of nested shapes
        whys = [mismatch(value, k, where) for k in kinds]
        return None if None in whys else whys[0]
    if isinstance(value, float) and not math.isfinite(value):  # no record of ours holds one
        return f"{at} is {value}, not a finite number"
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return None
    return f"{at} is {type(value).__name__} {repr(value)[:40]}, not {' or '.join(k.__name__ for k in kinds)}"


def read_jsonl(path: str | os.PathLike, shape: Shape | None = None) -> list[dict]:
    """The rows of a journal (one JSON object a line, appended by `append_jsonl`): the files a
    crash-resume rests on, so a damaged line (bad bytes, a torn tail, not an object, or a row
    that does not fit `shape`) is skipped with one warning naming the file and the line, and
    every valid row is still used. A journal that cannot be read at all is an `AtomddError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AtomddError(
            f"cannot read the journal {path}: {e.strerror or e}; move it aside to start it afresh"
        ) from None
    rows, bad = [], []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and (shape is None or mismatch(row, shape) is None):
            rows.append(row)
        else:
            bad.append(n)
    if bad and (str(path), tuple(bad)) not in _warned:  # once per process, not once per read
        _warned.add((str(path), tuple(bad)))
        where = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log.warning("%s: skipped damaged line(s) %s (not a row of this journal); used the rest", path, where)
    return rows


_SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str]
) -> None:
    """Write torch tensors as a safetensors file, atomically and byte-for-byte reproducibly.

    The safetensors library writes its metadata in hash order, so the same set saved twice gave
    different bytes; here the header is JSON with sorted keys, tensors laid out by (item size, name).
    """
    import torch

    if sys.byteorder != "little":  # safetensors is little-endian; let the library convert
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        return
    entries, offset = [], 0
    for name, t in sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        dtype = _SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise TypeError(f"cannot store {name} of dtype {t.dtype} in safetensors")
        t = t.detach().cpu().contiguous()
        nbytes = t.numel() * t.element_size()
        info = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        entries.append((name, t, info))
        offset += nbytes
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    header |= {name: info for name, _, info in entries}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, t, _ in entries:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed named by its parts (seed, step or run, purpose): independent of what ran before."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def versions() -> dict[str, str]:
    """Versions that decide whether a result can be reproduced."""
    import numpy
    import torch

    from atomdd import __version__

    return {
        "atomdd": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.version.cuda or "none",
    }
