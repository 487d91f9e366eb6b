"""The shape of the package: no import cycles, a lazy root, an engine that imports none of its
presentation, reports that load no torch, the folders' file names spelled in one place, benchmarks
that share one helper module, long modules flagged."""

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
    import atomdd.api

    assert callable(atomdd.distill) and atomdd.distill is atomdd.api.distill


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_engine_imports_none_of_its_presentation():
    """No import (lazy ones included) from `atomdd.distillation` reaches the report or TensorBoard:
    the figures and the event files plug in through the driver's hooks, from `atomdd.api`."""
    graph = import_graph()
    presentation = {m for m in graph if m == "atomdd.report" or m.startswith("atomdd.report.")}
    presentation |= {"atomdd.tblog", "atomdd.api", "atomdd.reporting"}
    for module in (m for m in graph if m.startswith("atomdd.distillation")):
        assert not graph[module] & presentation, (module, graph[module] & presentation)
        assert not _reached(graph, module) & presentation, (module, _reached(graph, module) & presentation)
    for module in (m for m in graph if m.startswith("atomdd.folders")):  # the contract, no pictures
        assert not _reached(graph, module) & presentation, module


def test_the_report_and_the_folders_load_no_torch(tmp_path):
    """`import atomdd.report`, the folders' modules and `atomdd report` over a run folder (its
    figures copied, not redrawn) and a grid load no torch: a table needs none."""
    import json

    from PIL import Image

    run = tmp_path / "grid" / "ipc1" / "atom-seed0"
    run.mkdir(parents=True)
    config = {"dataset": "digits", "ipc": 1, "method": "atom", "seed": 0, "iterations": 4}
    (run / "run.json").write_text(json.dumps({"status": "done", "config": config, "command": "x"}))
    model = {"runs": [50.0, 52.0], "mean": 51.0, "std": 1.0, "seconds": 1.0}
    evaluation = {"models": {"convnet": model}, "config": {"epochs": 2, "runs": 2}, "seconds": 2.0}
    (run / "eval.json").write_text(json.dumps(evaluation | {"dataset": "digits", "set": {"ipc": 1}}))
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 1.5}\n{"step": 4, "loss": 1.0}\n')
    for name in ("grid.png", "attention.png"):
        Image.new("RGB", (8, 8), (0, 90, 200)).save(run / name)
    argv = ["report", str(tmp_path / "grid"), str(run), "--out", str(tmp_path / "out")]
    check = (
        "import sys\n"
        "import atomdd.report, atomdd.folders.layout, atomdd.folders.run, atomdd.folders.evals\n"
        "from atomdd.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
    assert "| atom | 51.0 ± 1.0 (n=1) |" in (tmp_path / "out" / "report.md").read_text()


def _source_files() -> dict[Path, str]:
    root = SRC.parent
    files = [*PACKAGE.rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    return {p: p.read_text() for p in files}


def test_the_folders_file_names_are_spelled_in_one_place():
    """Each file name a run, set, evaluation, grid or search folder holds is declared in
    `folders/layout.py`; everything else in src/ and benchmarks/ names it through there."""
    from atomdd.folders import layout

    names = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v]
    assert {"run.json", "eval.json", "synthetic.safetensors", "grid.png"} <= set(names)
    found = {
        (path.relative_to(SRC.parent).as_posix(), name)
        for path, text in _source_files().items()
        if path.name != "layout.py"
        for name in names
        if f'"{name}"' in text or f"'{name}'" in text or f"/ {name}" in text
    }
    assert not found, f"file names spelled outside folders/layout.py: {sorted(found)}"


def test_benchmarks_share_one_helper_module_and_import_no_other_benchmark():
    bench = SRC.parent / "benchmarks"
    scripts = {p.stem for p in bench.glob("*.py")}
    for path in bench.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        }
        assert imported & scripts <= {"common"}, (path.name, imported & scripts)


def test_long_modules_are_flagged_not_refused():
    """Files split by concept, not by length: a module past 400 lines is worth a look (a warning),
    never a failure that decides where a file splits."""
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    if over := {n: lines for n, lines in long.items() if lines > 400}:
        warnings.warn(f"long modules (split by concept where one has grown two): {over}", stacklevel=1)
