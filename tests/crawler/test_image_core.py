"""The image core (``crawler/images``) imports no Scrapy or Twisted, a worker process starts
without them, pipelines never import each other, and no package has an import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = sorted(
    f"crawler.images.{path.stem}" for path in (REPO / "crawler" / "images").glob("*.py") if path.stem != "__init__"
)


def loaded_roots(*modules: str) -> set[str]:
    """Top-level names of every module loaded by importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_the_image_core_loads_no_scrapy_or_twisted() -> None:
    roots = loaded_roots(*CORE)
    assert {"PIL", "imagehash", "numpy"} <= roots  # it did import the image libraries
    assert not roots & {"scrapy", "twisted", "itemadapter", "parsel"}, sorted(roots)


def test_a_worker_process_starts_without_scrapy() -> None:
    """What ``python -m crawler.workers`` imports before its first task: its module and PRELOAD."""
    from crawler.workers import PRELOAD

    assert "crawler.images.prepare" in PRELOAD
    roots = loaded_roots("crawler.workers", *PRELOAD)
    assert not roots & {"scrapy", "twisted", "itemadapter", "parsel"}, sorted(roots)


def imports_of(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` (module and function level alike)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        base_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import x\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert cycles(imports_of(package)) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", ["crawler", "trainer"])
def test_no_import_cycle(package: str) -> None:
    assert cycles(imports_of(REPO / package)) == []


def test_pipelines_never_import_each_other() -> None:
    edges = imports_of(REPO / "crawler")
    for name, targets in edges.items():
        if name.startswith("crawler.pipelines."):
            assert not {t for t in targets if t.startswith("crawler.pipelines")}, (name, targets)
    # The image core needs nothing of the crawl's Scrapy side.
    for name in CORE:
        assert not {t for t in edges[name] if t.startswith(("crawler.pipelines", "crawler.threads"))}, name
