"""The structure docs/architecture.md describes, checked on the source: imports only run downwards, the
HTTP error type stays in the API layer, functions stay short, the seams stay narrow, and one module
owns adapter capacity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[1] / "server"
# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("foundation", ["server", "server.errors", "server.config", "server.logs", "server.sources", "server.cache",
                    "server.demo_assets", "server.demo_lora", "server.demo_m3", "server.model_layout",
                    "server.packaged", "server.public_paths", "server.threads", "server.help_format",
                    "server.digests", "server.tenancy", "server.object_sources"]),
    ("lora", ["server.lora"]),
    ("backends", ["server.backends"]),
    ("adapters", ["server.adapters"]),
    ("core", ["server.batching", "server.tokenization", "server.postprocess", "server.answers", "server.answer_budget",
              "server.options",
              "server.served_model", "server.local_model", "server.model_loading", "server.build"]),
    ("api", ["server.api"]),
    ("scaleout", ["server.scaleout"]),
    ("training", ["server.training"]),
    ("cli", ["server.cli"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer of tests/test_architecture.py"
    return rank


def imports_of(path: Path) -> set[str]:
    """Every `server.*` module imported anywhere in the file (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = {module_name(p) for p in SERVER.rglob("*.py")}
    return {name for name in found if name in known}


SOURCES = sorted(SERVER.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SERVER)))
def test_imports_run_downwards_only(path):
    here = module_name(path)
    upward = [name for name in imports_of(path) if layer_of(name) > layer_of(here)]
    assert not upward, f"{here} ({LAYERS[layer_of(here)][0]}) imports a higher layer: {upward}"


def test_no_import_circle():
    """No module reaches itself through the imports of others (lazy ones included): a circle makes import
    order matter and hides which module depends on which."""
    graph = {module_name(path): imports_of(path) - {module_name(path)} for path in SOURCES}
    graph = {module: {n for n in names if n in graph and not module.startswith(n + ".")}  # not its own package
             for module, names in graph.items()}

    def circle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [circle for module in graph if (circle := circle_from(module)) is not None]
    assert circles == [], circles[0]


def test_only_the_api_layer_knows_the_http_error_type():
    outside = [module_name(p) for p in SOURCES if not module_name(p).startswith("server.api")
               and ("server.api.errors" in imports_of(p) or "ApiError" in p.read_text())]
    assert outside == []


def test_no_function_is_over_60_lines():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(SERVER)}:{node.lineno} {node.name}")
    assert long == []


def test_seams_stay_narrow():
    from server.backends.base import Backend
    from server.served_model import ServedModel

    assert sorted(Backend.__abstractmethods__) == ["close", "embed", "info", "install", "remove", "start"]
    members = {name for name in vars(ServedModel) if not name.startswith("_")}
    members |= set(ServedModel.__annotations__)
    assert members - {"admin"} == {"adapters", "config", "encode", "encode_each", "start", "status", "stop"}


def test_adapter_capacity_has_one_owner():
    """`max_loras_per_model` is a setting (config) handed to the registry (local_model); only the
    registry compares anything against it."""
    mentions = sorted(str(p.relative_to(SERVER)) for p in SOURCES if "max_loras_per_model" in p.read_text())
    assert mentions == ["adapters/__init__.py", "adapters/loading.py", "adapters/registry.py", "config.py",
                        "local_model.py"]  # the registry is registry.py and its loading half
    assert "capacity" not in (SERVER / "backends" / "torch_backend.py").read_text()
