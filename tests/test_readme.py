"""The README: its two set-up commands are what CI runs, word for word; every command it shows is one
the CLI takes; its Python snippet runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_setup_commands():
    first, second = setup_commands()
    assert "torch==2.13.0" in first or "pip install -e ." in first
    assert first.rstrip().endswith("atomdd demo")
    assert "[test]" in second and "pytest" in second


def test_ci_runs_the_readme_commands():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in setup_commands():
        assert command.strip() in ci, f"CI does not run the README command: {command}"


def test_readme_is_a_front_door_with_links_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 11_000, "the README is a front door: keep it about 10 KB"
    assert "http" not in readme and "../" not in readme, "no links outside the repository"
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            assert not target.startswith(("http:", "https:")), f"{page.name} links outside: {target}"
            if target.endswith("cifar10.md"):
                continue  # the CIFAR-10 page is written beside this work
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def readme_commands() -> list[list[str]]:
    """The arguments of every `atomdd …` (or `… -m atomdd …`) command of the README's shell blocks;
    a `...` stands for the flags of the line above."""
    import shlex

    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            while "atomdd" in tokens:
                tokens = tokens[tokens.index("atomdd") + 1 :]
                end = tokens.index("&&") if "&&" in tokens else len(tokens)
                commands.append([t for t in tokens[:end] if t != "..."])
                tokens = tokens[end:]
    return commands


def test_every_readme_command_is_one_the_cli_takes():
    """Each command the README shows parses: its subcommand and every flag exist as spelled."""
    import contextlib
    import io

    from atomdd.cli import build_parser

    commands = readme_commands()
    assert {c[0] for c in commands} >= {
        "demo",
        "distill",
        "evaluate",
        "coreset",
        "report",
        "show",
        "nas",
        "grid",
    }
    for argv in commands:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                build_parser().parse_args(argv)
            except SystemExit:
                raise AssertionError(f"the README's `atomdd {' '.join(argv)}`: {err.getvalue()}") from None
        assert "is now" not in err.getvalue(), (argv, err.getvalue())  # no renamed flag in the README


# The README's Python snippet, run as written but on digits with a budget of seconds: each change is
# spelled here, and one the README no longer matches fails the test (edit both together).
SMALL = [
    (
        'dataset="mnist", ipc=10, method="atom", data_root="~/data",',
        'dataset="digits", ipc=2, method="atom",',
    ),
    ('out="runs/mnist10")', 'out="runs/mnist10", iterations=2, width=16, batch_real=8)'),
    ('EvalConfig(epochs=300, repeats=5), data_root="~/data",', "EvalConfig(epochs=1, repeats=1),"),
    ('select("mnist", 10, "herding", data_root="~/data")', 'select("digits", 2, "herding")'),
    ("epochs=50)", "epochs=1, truth_epochs=1, dsa='none')"),
]


@pytest.mark.slow
def test_the_readme_python_snippet_runs(tmp_path, monkeypatch, one_thread):
    (snippet,) = _blocks("python")[:1]
    for old, new in SMALL:
        assert old in snippet, f"the README's snippet no longer holds {old!r}: update SMALL with it"
        snippet = snippet.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "runs" / "nas" / "nas.json").exists()
    assert namespace["result"]["models"]["convnet"]["runs"] and len(namespace["herding"].labels) == 20
