"""The package's structure holds: data flows one way (no import cycle, function-level imports and
TYPE_CHECKING blocks included), the training loop knows nothing of searches, and no product
function is named like a test."""

from __future__ import annotations

import ast
from pathlib import Path

import cifarbench

PACKAGE = Path(cifarbench.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every cifarbench module `path` imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from cifarbench import record` imports the module cifarbench.record
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_even_inside_functions():
    graph = import_graph()
    assert len(graph) > 30 and "cifarbench.train" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_hidden_cycle():
    """The check itself: an import inside a function that closes a loop is a cycle."""
    graph = import_graph()
    graph["cifarbench.record"] = {*graph["cifarbench.record"], "cifarbench.train"}  # as if record imported train
    assert find_cycle(graph) is not None


def test_the_training_loop_names_no_search():
    graph = import_graph()
    below_train = set()
    todo = ["cifarbench.train"]
    while todo:
        for target in graph[todo.pop()]:
            if target not in below_train:
                below_train.add(target)
                todo.append(target)
    assert not {m for m in below_train if m.startswith(("cifarbench.search", "cifarbench.report"))}


def test_only_record_writes_metrics_json():
    writers = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if "metrics.json" in path.read_text() and "write_json" in path.read_text()
    ]
    assert writers == ["cifarbench.record"]


def test_no_product_function_is_named_like_a_test():
    named = [
        f"{module_name(path)}.{node.name}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name.startswith("test_")
    ]
    assert named == []
