"""The shape of the package: no import cycles, a lazy root, long modules flagged."""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "atomdd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module → the atomdd modules it imports, anywhere in its body (lazy imports in functions
    count too), except under `if TYPE_CHECKING:` and a package's imports of its own submodules
    (the registration of built-in datasets and models)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        edges = {t for t in targets if t in modules and t != name}
        if is_package:
            edges = {t for t in edges if not t.startswith(name + ".")}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert "atomdd.evaluate" in graph["atomdd.cli"] or "atomdd.evaluate" in str(
        graph
    )  # the walk sees imports
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_coreset_trains_through_train_not_evaluate():
    graph = import_graph()
    assert "atomdd.train" in graph["atomdd.coreset"] and "atomdd.evaluate" not in graph["atomdd.coreset"]


@pytest.mark.parametrize(
    "code",
    [
        "import atomdd, atomdd.errors, atomdd.cli, atomdd.distillation.config, atomdd.parallel",
        "from atomdd.cli import build_parser; build_parser().format_help()",
    ],
)
def test_the_root_and_the_parser_import_no_torch(code):
    check = f"import sys; {code}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_the_root_exports_the_distill_function():
    import atomdd
    import atomdd.distillation.driver

    assert callable(atomdd.distill) and atomdd.distill is atomdd.distillation.driver.distill


def test_long_modules_are_flagged_not_refused():
    """Files split by concept, not by length: a module past 400 lines is worth a look (a warning),
    never a failure that decides where a file splits."""
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    if over := {n: lines for n, lines in long.items() if lines > 400}:
        warnings.warn(f"long modules (split by concept where one has grown two): {over}", stacklevel=1)
