"""Where a result came from in the source: the git commit of the atomdd checkout, and whether its
tracked files differed from that commit (a dirty tree)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state() -> dict[str, str | bool] | None:
    """{"commit": sha, "dirty": bool} of the checkout atomdd runs from; None outside a git checkout
    (e.g. an installed wheel) or without git."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}
