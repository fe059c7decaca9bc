"""The package's layers, lowest first: a module imports only from its own layer or below it.

Module-level imports are checked everywhere. Function-level imports may reach only below, too,
except the few that keep TensorFlow, Keras or OpenCV off the import path, which this test
allows by name. There is no import circle between modules, and no module is over ~500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "weightconv"

#: Lowest first. A module's layer is the first entry its dotted name starts with.
LAYERS = [
    "weightconv.errors",
    "weightconv._version",
    "weightconv._proto",
    "weightconv._util",
    "weightconv.codecs",
    "weightconv.arrays",
    "weightconv.lrn",
    "weightconv.model",
    "weightconv.formats",
    "weightconv.mapping",
    "weightconv.reports",
    "weightconv.pipeline",
    "weightconv.access",
    "weightconv.testing",
    "weightconv.nets",
    "weightconv.verify",
    "weightconv.cli",
    "weightconv.__main__",
    "weightconv",
]
#: Packages whose modules are layered among themselves as well: sub-layers, lowest first.
SUBLAYERS = {
    "weightconv.formats": [
        "weightconv.formats.base",
        "weightconv.formats.npy",
        "weightconv.formats.caffe",
        "weightconv.formats.ckpt",
        "weightconv.formats.keras_h5",
        "weightconv.formats.npz",
        "weightconv.formats.torch",
        "weightconv.formats.safetensors",
        "weightconv.formats.onnx",
        "weightconv.formats",
    ],
}
#: Heavy optional dependencies a module may import only inside a function.
LAZY_ONLY = {"tensorflow", "keras", "tf_keras", "cv2", "torch", "onnxruntime"}
MAX_LINES = 520


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _rank(module: str, table: list[str]) -> int:
    for index, prefix in enumerate(table):
        if module == prefix or module.startswith(prefix + "."):
            return index
    raise AssertionError(f"{module} is in no layer of {table}")


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for each weightconv import of `path`."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` / try count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports the module a.b.c when there is one, else a.b
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                name = full if full in MODULES else node.module
                found.append((name, node.lineno, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, id(node) in top_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use absolute ones")
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_from_below(module):
    path = MODULES[module]
    mine = _rank(module, LAYERS)
    for name, line, top in _imports(path):
        root = name.split(".")[0]
        if root in LAZY_ONLY:
            assert not top, f"{path}:{line}: {root} imported at module level"
            continue
        if not name.startswith("weightconv") or name not in MODULES:
            continue  # a name imported from a module, or another package
        theirs = _rank(name, LAYERS)
        assert theirs <= mine, f"{path}:{line}: {module} imports {name}, a layer above it"
        for package, sublayers in SUBLAYERS.items():
            inside = module.startswith(package + ".") and name.startswith(package + ".")
            if inside and mine == theirs:
                assert _rank(name, sublayers) <= _rank(module, sublayers), (
                    f"{path}:{line}: {module} imports {name}, above it within {package}"
                )


def test_no_import_circle():
    graph = {
        module: {
            name for name, _, top in _imports(path) if top and name in MODULES and name != module
        }
        for module, path in MODULES.items()
    }
    # a package's __init__ importing its own submodules is the usual re-export, not a circle
    for module in graph:
        graph[module] = {n for n in graph[module] if not n.startswith(module + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_long(module):
    path = MODULES[module]
    if path.name.endswith("_pb2.py"):
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (split it: ~500 at most)"
