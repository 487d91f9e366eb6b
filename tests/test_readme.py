"""The README's two set-up commands are what CI runs, word for word."""

import re
from pathlib import Path

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
