"""Every arrow of the architecture (docs/ARCHITECTURE.md), checked on the import statements:

- the engine (src/miragevpn) imports no IO, clock, process or thread module, and never the
  runtime package;
- config/ imports from the engine only the shared errors (plus the standard library and
  `cryptography`);
- ctypes only in libcrypto.py (the one native binding), and only inside functions (loaded
  on first use, not at import).

`violations` is tested on a synthetic package too, so that this test is known to fail when a
forbidden import appears.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "src" / "miragevpn"
ENGINE_FORBIDDEN = frozenset(
    {
        "argparse",
        "asyncio",
        "importlib",
        "multiprocessing",
        "os",
        "pathlib",
        "qubes_miragevpn",
        "random",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
    }
)
# config/ may use the engine's shared leaves: its errors and the escaping of shown text.
CONFIG_ENGINE_ALLOWED = ("miragevpn.errors", "miragevpn.printable", "miragevpn.config")
CONFIG_THIRD_PARTY = frozenset({"cryptography"})
NATIVE = frozenset({"ctypes"})
NATIVE_HOME = "libcrypto.py"


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for each import that can run."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return  # never runs
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if node.module:
                found.append((target, node.lineno, top))
            # `from . import keys` imports the submodule miragevpn.config.keys
            found.extend((f"{target}.{a.name}", node.lineno, top) for a in node.names)
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def violations(engine: Path) -> list[str]:
    """Every forbidden import under the engine package at `engine`."""
    out: list[str] = []
    stdlib = sys.stdlib_module_names
    for path in sorted(engine.rglob("*.py")):
        rel = path.relative_to(engine).as_posix()
        module = _module_name(path, engine)
        tree = ast.parse(path.read_text(), filename=str(path))
        in_config = rel.startswith("config/")
        for name, line, top in _imports(tree, module, path.name == "__init__.py"):
            head = name.split(".")[0]
            where = f"{rel}:{line}: {name}"
            if head in ENGINE_FORBIDDEN:
                out.append(f"{where}: the engine does no IO and never imports the runtime")
            if head in NATIVE and rel != NATIVE_HOME:
                out.append(f"{where}: native bindings only in {NATIVE_HOME}")
            if head in NATIVE and top:
                out.append(f"{where}: {head} is loaded on first use, not at import")
            if in_config:
                engine_module = head == engine.name
                if engine_module and not name.startswith(CONFIG_ENGINE_ALLOWED):
                    out.append(f"{where}: config/ uses only the shared errors of the engine")
                if not engine_module and head not in stdlib and head not in CONFIG_THIRD_PARTY:
                    out.append(f"{where}: config/ uses the standard library and cryptography")
    return out


def test_engine_follows_the_architecture() -> None:
    assert violations(ENGINE) == []


def test_importing_the_engine_loads_no_ctypes() -> None:
    code = (
        "import sys, miragevpn.aead, miragevpn.client, miragevpn.config\n"
        "print(sorted(m for m in ('ctypes', 'asyncio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "miragevpn" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "miragevpn"


def test_a_clean_synthetic_engine_passes(tmp_path: Path) -> None:
    engine = _write(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "import struct\n",
            "libcrypto.py": "def load():\n    import ctypes\n    return ctypes\n",
            "config/__init__.py": "from .parse import x\n",
            "config/parse.py": (
                "from ..errors import E\nfrom .. import errors\nfrom . import keys\n"
                "import cryptography\n"
            ),
            "config/keys.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n"
            ),
        },
    )
    assert violations(engine) == []


def test_every_forbidden_import_is_reported(tmp_path: Path) -> None:
    engine = _write(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "push.py": "",
            "client.py": "import os\nfrom time import monotonic\n",
            "runner.py": "def f():\n    import threading\n    from qubes_miragevpn import cli\n",
            "libcrypto.py": "import ctypes\n",
            "tls.py": "def f():\n    import ctypes\n",
            "config/__init__.py": "",
            "config/parse.py": "from ..push import split\nfrom .. import client\n",
            "config/io.py": "import argparse\nimport pyroute2\n",
        },
    )
    found = violations(engine)
    expected = [
        ("client.py:1: os", "no IO"),
        ("client.py:2: time", "no IO"),
        ("runner.py:2: threading", "no IO"),
        ("runner.py:3: qubes_miragevpn", "never imports the runtime"),
        ("libcrypto.py:1: ctypes", "not at import"),
        ("tls.py:2: ctypes", f"only in {NATIVE_HOME}"),
        ("config/parse.py:1: miragevpn.push", "only the shared errors"),
        ("config/parse.py:2: miragevpn.client", "only the shared errors"),
        ("config/io.py:1: argparse", "no IO"),
        ("config/io.py:2: pyroute2", "standard library and cryptography"),
    ]
    for prefix, reason in expected:
        assert any(v.startswith(prefix) and reason in v for v in found), (prefix, found)
