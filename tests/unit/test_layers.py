"""The package's layers, and a check that every import points down them.

A layer may import itself and the layers below it, never a layer above, and never a sibling in
its own layer (kafka and evaluation are both front ends of the detector and know nothing of each
other). Imports inside functions count the same as those at the top of a module: a lazy import is
still a dependency. Modules inside one package must not import each other in a cycle either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest

import stream_detector

PACKAGE: Final = "stream_detector"
# Lowest first. A name is a top-level module or sub-package of stream_detector.
LAYERS: Final[tuple[frozenset[str], ...]] = (
    frozenset({"__init__", "limits", "logs", "stop_signals"}),
    frozenset({"config"}),
    frozenset({"engine"}),
    frozenset({"aggregate"}),
    frozenset({"detector"}),
    frozenset({"scenarios"}),
    frozenset({"kafka", "evaluation"}),
    frozenset({"demo", "forward", "inspect"}),
    frozenset({"benchmarking"}),
    frozenset({"cli", "__main__"}),
)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path) -> Iterator[tuple[str, str]]:
    """(importer, imported) for every import of the package inside the package at `root`."""
    for path in sorted(root.rglob("*.py")):
        importer = _module_name(root, path)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = importer.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    names = [".".join([*base, node.module] if node.module else base)]
                else:
                    names = [node.module or ""]
                # `from pkg import module` names a module too.
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    yield importer, name


def _unit(module: str) -> str:
    """The layered unit a module belongs to: its top-level module or sub-package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(root: Path, layers: tuple[frozenset[str], ...] = LAYERS) -> list[str]:
    """Every import that points up or sideways, and every unit the layers do not place."""
    rank: Mapping[str, int] = {unit: i for i, layer in enumerate(layers) for unit in layer}
    existing = {p.stem if p.is_file() else p.name for p in root.iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").exists())}
    problems = [f"{unit}: not in any layer" for unit in sorted(existing - rank.keys())]
    wrong: dict[tuple[str, str], str] = {}
    for importer, imported in imports_of(root):
        source, target = _unit(importer), _unit(imported)
        if source != target and source in rank and target in rank and rank[target] >= rank[source]:
            # One line per importer and wrong unit: the shortest name it imports there.
            shortest = wrong.get((importer, target), imported)
            wrong[(importer, target)] = min(shortest, imported, key=len)
    for (importer, target), imported in wrong.items():
        source = _unit(importer)
        kind = "up" if rank[target] > rank[source] else "sideways"
        problems.append(f"{importer} imports {imported} ({kind}: {source} -> {target})")
    return sorted(problems)


def module_cycles(root: Path) -> list[list[str]]:
    """Import cycles between modules (a module importing a name its package's __init__ defines
    does not count: that is Python's own package loading, not a dependency loop)."""
    modules = {_module_name(root, p) for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported in imports_of(root):
        while imported not in modules and "." in imported:
            imported = imported.rsplit(".", 1)[0]
        if imported in modules and imported != importer and not importer.startswith(imported + "."):
            graph[importer].add(imported)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


ROOT: Final = Path(stream_detector.__file__).resolve().parent


def test_every_import_points_down_the_layers() -> None:
    assert layer_violations(ROOT) == []


def test_no_module_import_cycles() -> None:
    assert module_cycles(ROOT) == []


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from stream_detector.kafka.service import X\n",
         "stream_detector.engine.model imports stream_detector.kafka.service (up: engine -> kafka)"),
        ("def f():\n    import stream_detector.detector.facade\n",
         "stream_detector.engine.model imports stream_detector.detector.facade "
         "(up: engine -> detector)"),
        ("from stream_detector import kafka\n",
         "stream_detector.engine.model imports stream_detector.kafka (up: engine -> kafka)"),
    ],
)
def test_a_wrong_import_is_reported(tmp_path: Path, text: str, expected: str) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "", "config.py": "",
        "engine/__init__.py": "", "engine/model.py": text,
        "kafka/__init__.py": "", "kafka/service.py": "from stream_detector.engine import model\n",
        "detector/__init__.py": "", "detector/facade.py": "",
    })
    assert expected in layer_violations(root)
    assert not any(v.startswith("stream_detector.kafka.service") for v in layer_violations(root))


def test_a_sibling_import_and_an_unplaced_unit_are_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "kafka/__init__.py": "", "kafka/service.py": "import stream_detector.evaluation.runner\n",
        "evaluation/__init__.py": "", "evaluation/runner.py": "",
        "stray.py": "",
    })
    assert layer_violations(root) == [
        "stray: not in any layer",
        "stream_detector.kafka.service imports stream_detector.evaluation.runner "
        "(sideways: kafka -> evaluation)",
    ]


def test_a_cycle_inside_a_package_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "", "engine/__init__.py": "",
        "engine/a.py": "from stream_detector.engine.b import x\n",
        "engine/b.py": "def f():\n    from stream_detector.engine import a\n",
    })
    assert module_cycles(root) == [
        ["stream_detector.engine.a", "stream_detector.engine.b", "stream_detector.engine.a"]]
