"""Enforces DESIGN.md §2 by reading imports: policies/ imports nothing from the project; backends/
imports only the shared leaf modules of gateway/ (types, errors, and the loop-bound asyncio helpers
that the per-request path of both layers uses); concrete adapters and policies are known only
to the composition root."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("gateway", "backends", "policies", "benchmarks")
SHARED_GATEWAY = {"gateway.types", "gateway.errors", "gateway.loop_bound"}
COMPOSITION_ROOTS = {"gateway/composition.py", "gateway/cli.py"}


def imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_policies_import_nothing_from_the_project() -> None:
    bad = [(str(p.relative_to(ROOT)), name) for p in modules("policies") for name in imports(p)
           if name.split(".")[0] in PROJECT and not name.startswith("policies")]
    assert bad == []


def test_policies_do_no_io() -> None:
    io_modules = {"asyncio", "socket", "aiohttp", "httpx", "redis", "subprocess", "requests"}
    bad = [(str(p.relative_to(ROOT)), name) for p in modules("policies") for name in imports(p)
           if name.split(".")[0] in io_modules]
    assert bad == []


def test_backends_import_only_shared_gateway_types() -> None:
    bad = [(str(p.relative_to(ROOT)), name) for p in modules("backends") for name in imports(p)
           if name.split(".")[0] == "gateway" and name not in SHARED_GATEWAY]
    assert bad == []


def test_shared_gateway_modules_import_nothing_from_the_project() -> None:
    for shared in SHARED_GATEWAY:
        path = ROOT / (shared.replace(".", "/") + ".py")
        assert [n for n in imports(path) if n.split(".")[0] in PROJECT] == [], shared


def test_only_the_composition_root_knows_concrete_adapters_and_policies() -> None:
    concrete = ("backends.vllm", "backends.tgi", "backends.sim", "backends.launchers")
    # Pure helpers (hashing, rate-limit arithmetic, the interface) may be used anywhere; the concrete
    # routing policies and their factory only by the composition root.
    concrete_policies = ("policies.round_robin", "policies.least_loaded", "policies.prefix_affinity",
                         "policies.registry")
    bad = []
    for path in modules("gateway"):
        rel = str(path.relative_to(ROOT))
        if rel in COMPOSITION_ROOTS:
            continue
        for name in imports(path):
            if name.startswith(concrete) or name.startswith(concrete_policies):
                bad.append((rel, name))
    assert bad == []
