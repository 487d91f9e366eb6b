"""The one exception type that reaches the user as a message, not a traceback.

Raise `AtomddError` for anything the user can fix (a bad name, a missing file, a corrupt file,
an impossible setting); the CLI prints its message and exits with status 2.
"""


class AtomddError(Exception):
    """A problem the user can fix; its message says what to do."""


class Interrupted(AtomddError):
    """A stop was asked for (SIGINT/SIGTERM through the entry point); a checkpoint was written first.
    The CLI exits with status 130."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> AtomddError:
    """The error for a registry miss: always lists the valid names."""
    return AtomddError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
