"""policies/ stays pure: stdlib-only imports, nothing from the project, no module-level mutable state,
no I/O and nothing asynchronous."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

POLICIES = Path(__file__).resolve().parents[2] / "policies"
# The routing modules (other pure modules in policies/, e.g. rate-limit arithmetic, have their own owners
# and tests; the project-wide layering test covers their imports).
ROUTING_MODULES = (
    "__init__",
    "base",
    "hash_ring",
    "least_loaded",
    "load_bound",
    "prefix_affinity",
    "prefix_hash",
    "prefix_index",
    "registry",
    "round_robin",
)
MODULES = [POLICIES / f"{name}.py" for name in ROUTING_MODULES]
MUTABLE_CALLS = {"list", "dict", "set", "bytearray", "OrderedDict", "defaultdict", "deque", "Counter"}
IO_CALLS = {"open", "print", "input", "exec", "eval"}


def test_there_are_modules_to_check() -> None:
    assert all(path.is_file() for path in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_imports_are_stdlib_or_policies(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "absolute imports only"
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root == "policies" or root in sys.stdlib_module_names, f"{path.name} imports {root}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_no_module_level_mutable_state_io_or_async(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is None:
            continue
        assert not isinstance(
            value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp
        )
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            assert value.func.id not in MUTABLE_CALLS, f"{path.name}: module-level {value.func.id}()"
    for node in ast.walk(tree):
        assert not isinstance(node, ast.Global | ast.AsyncFunctionDef | ast.Await), f"{path.name}: {node}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in IO_CALLS, f"{path.name} calls {node.func.id}"
