"""The package layout stays readable: no import cycle among tinyrm modules, no module over 400 lines
(tinyrm's, the tests' or the benchmarks').

Imports are read with ``ast`` (module level and inside functions alike, relative ones resolved), so
a lazy import cannot hide a cycle. ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module, else to ``pkg``. Importing ``pkg.sub`` from outside ``pkg`` runs ``pkg/__init__`` first, so it
is an edge to ``pkg`` too: a package ``__init__`` may import its own submodules, but nothing it
imports may lead back into the package from outside.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_PACKAGE = "tinyrm"
MAX_LINES = 400


def module_files(src: Path = SRC, package: str = ROOT_PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is its ``__init__``)."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(files: Mapping[str, Path], package: str = ROOT_PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports (see the module docstring for what counts)."""
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in files else base)
        edges: set[str] = set()
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            while target not in files:  # an attribute path such as tinyrm.x.Name
                target = target.rpartition(".")[0]
            edges.add(target)
            # Entering a package from outside runs its __init__ (the root package holds everything).
            edges.update(a for a in _ancestors(target) if a != package and not (module + ".").startswith(a + "."))
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_among_tinyrm_modules():
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_400_lines():
    """tinyrm's modules, and the tests and benchmarks beside them."""
    root = SRC.parent
    beside = [path for folder in ("tests", "benchmarks") for path in sorted((root / folder).rglob("*.py"))]
    files = {**module_files(), **{str(path.relative_to(root)): path for path in beside}}
    long = {name: n for name, path in files.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in sorted(long.items()))


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh module table: no import order leaves a name half-defined."""
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(module_files())!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'tinyrm' or m.startswith('tinyrm.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        print(f'{name}: {type(error).__name__}: {error}')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr[-2000:]


def test_the_graph_sees_lazy_relative_and_from_imports():
    graph = import_graph(module_files())
    assert "tinyrm.pairwise.model" in graph["tinyrm.auto"]  # from .pairwise.model import ...
    assert "tinyrm.process" in graph["tinyrm.auto"]  # entering the package runs its __init__
    assert "tinyrm.training.recipes" in graph["tinyrm.cli.core"]  # inside a function, two dots
    assert "tinyrm.process.aggregate" in graph["tinyrm.aggregate"]  # from .process import aggregate (a module)


@pytest.mark.parametrize("files, cycle", [
    # a.py: `from .b import f`; b.py: `def g(): from . import a` (lazy, still a cycle)
    ({"a.py": "from .b import f\n", "b.py": "def g():\n    from . import a\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    # a submodule importing its own package's __init__, which imports it
    ({"sub/__init__.py": "from .x import X\n", "sub/x.py": "from ..sub import helper\nX = 1\n"},
     ["pkg.sub", "pkg.sub.x", "pkg.sub"]),
    # entering sub from outside runs sub/__init__, which leads back out: a cycle only through the __init__
    ({"top.py": "from .sub.x import X\n", "sub/__init__.py": "from .y import Y\n", "sub/x.py": "X = 1\n",
      "sub/y.py": "from ..top import T\nY = 1\n"}, ["pkg.sub", "pkg.sub.y", "pkg.top", "pkg.sub"]),
])
def test_the_cycle_check_fails_on_a_cycle(tmp_path, files, cycle):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    assert find_cycle(import_graph(module_files(tmp_path, "pkg"), "pkg")) == cycle


def test_a_package_init_importing_its_submodules_is_no_cycle(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("from .sub.x import X\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from .x import X\n")
    (tmp_path / "pkg" / "sub" / "x.py").write_text("from .y import Y\nX = Y\n")
    (tmp_path / "pkg" / "sub" / "y.py").write_text("import pkg.other\nY = 1\n")
    (tmp_path / "pkg" / "other.py").write_text("O = 1\n")
    assert find_cycle(import_graph(module_files(tmp_path, "pkg"), "pkg")) is None
