"""The layering of ARCHITECTURE.md, checked on the source.

codex_bridge → http_front → supervisor → bridge, one direction; bridge's
core imports no IO library; the supervisor speaks no HTTP; http_front uses
the supervisor only through its package (the facade and exported types).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from http_front.errors import CODEX_ERRORS, FAILURES, INTERRUPTED, REFUSALS

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("bridge", "supervisor", "http_front")
#: bridge's sans-IO core.
BRIDGE_CORE = ("framing.py", "messages.py", "protocol.py", "log_limit.py")
IO_LIBRARIES = frozenset(
    {"trio", "anyio", "asyncio", "socket", "subprocess", "selectors", "httpx", "os", "io"}
)


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]  # a module's package (of __init__: its own)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
    return names


def test_the_modules_are_found() -> None:
    for package in (*LIBRARIES, "codex_bridge"):
        assert len(modules(package)) >= 3, package
    assert "supervisor.pool" in imported(ROOT / "supervisor" / "facade.py")
    assert "http_front.errors" in imported(ROOT / "http_front" / "chat" / "route.py")


@pytest.mark.parametrize("package", LIBRARIES)
def test_no_library_imports_the_program(package: str) -> None:
    for path in modules(package):
        bad = {m for m in imported(path) if m.split(".")[0] == "codex_bridge"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("package", ["bridge", "supervisor"])
def test_lower_layers_do_not_import_http_front(package: str) -> None:
    for path in modules(package):
        bad = {m for m in imported(path) if m.split(".")[0] == "http_front"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_bridge_does_not_import_the_supervisor() -> None:
    for path in modules("bridge"):
        bad = {m for m in imported(path) if m.split(".")[0] == "supervisor"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", BRIDGE_CORE)
def test_bridge_core_imports_no_io_library(name: str) -> None:
    bad = {m for m in imported(ROOT / "bridge" / name) if m.split(".")[0] in IO_LIBRARIES}
    assert not bad, f"bridge/{name} imports {bad}"


def test_http_front_uses_the_supervisor_through_its_package() -> None:
    for path in modules("http_front"):
        bad = {m for m in imported(path) if m.startswith("supervisor.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} instead of `supervisor`"


def _wire_terms() -> set[str]:
    entries = [*REFUSALS.values(), *FAILURES.values(), *CODEX_ERRORS.values(), INTERRUPTED]
    return {code for _, _, code in entries} | {kind for _, kind, _ in entries}


_HTTP_STATUS = re.compile(r"\b(status|status_code|http_status)\s*[:=]\s*[1-5]\d\d\b")


def test_the_supervisor_speaks_no_http() -> None:
    terms = _wire_terms()
    assert "rate_limit_exceeded" in terms  # the table is what is checked
    for path in modules("supervisor"):
        text = path.read_text()
        found = {t for t in terms if re.search(rf"[\"']{re.escape(t)}[\"']", text)}
        assert not found, f"{path.relative_to(ROOT)} mentions {found}"
        assert not _HTTP_STATUS.search(text), f"{path.relative_to(ROOT)} sets an HTTP status"
