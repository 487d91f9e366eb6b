"""The one exception type that reaches the user as a message, not a traceback.

Raise `AtomddError` for anything the user can fix (a bad name, a missing file, a corrupt file,
an impossible setting); the CLI prints its message and exits with status 2.
"""


class AtomddError(Exception):
    """A problem the user can fix; its message says what to do."""


class Interrupted(AtomddError):
    """A stop was asked for (SIGINT/SIGTERM/SIGHUP through the entry point); a checkpoint was written
    first. `signum` says which signal: the CLI exits with status 128 + it (130, 143, 129)."""

    def __init__(self, message: str, signum: int = 2) -> None:  # 2: SIGINT
        super().__init__(message)
        self.signum = int(signum)


class RankFailure(AtomddError):
    """Another rank died, raised, or did not reach a collective in time; the message names it."""


class WriteError(AtomddError):
    """A file could not be written (a full disk, a read-only folder, no permission): the message names
    the path; the previous file, if any, is left as it was. `result` may carry what was computed
    (an evaluation's, which the CLI prints all the same)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path
        self.result: object = None


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> AtomddError:
    """The error for a registry miss: always lists the valid names."""
    return AtomddError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


def refuse(what: str, problems: list[str]) -> None:
    """The one way settings are refused (each settings dataclass's `__post_init__` calls it with
    its `problems()`): every problem named at once."""
    if problems:
        raise AtomddError(f"invalid {what}: {'; '.join(problems)}")


def renamed(old: str, new: str) -> None:
    """Warn that a setting or flag was renamed; the old name keeps working."""
    import warnings

    warnings.warn(f"{old} is now {new}; the old name still works", FutureWarning, stacklevel=3)
