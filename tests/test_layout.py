"""The engine stays sans-IO: no module under src/miragevpn imports an IO or clock module."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "src" / "miragevpn"
FORBIDDEN = {"socket", "asyncio", "time", "select", "selectors", "subprocess", "random", "os"}
ALLOWED = {ENGINE / "config" / "check.py", ENGINE / "config" / "__main__.py"}  # the CLI edge


def test_engine_imports_no_io_modules() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        if path in ALLOWED:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ENGINE)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []
