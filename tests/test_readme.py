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
