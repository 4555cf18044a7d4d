"""Throwaway virtual environments for tools from the package index that the packaging tests
run but the project does not depend on (rpmlint, salt).

Each lives in a cache folder of the machine, outside the tree, keyed by the tool and the
system Python's version, and is made on first use (a fresh machine pays once; later runs
reuse it). `MIRAGEVPN_TOOL_VENVS` moves the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.packaging.build import SYSTEM_ENV

CACHE = Path(os.environ.get("MIRAGEVPN_TOOL_VENVS", "/var/cache/qubes-miragevpn-tests"))
SYSTEM_PYTHON = "/usr/bin/python3"


class ToolUnavailable(RuntimeError):
    """The package index would not give us the tool (the message says what pip said)."""


def tool_venv(name: str, requirement: str, *, system_site: bool = False) -> Path:
    """The bin/ folder of a virtual environment holding `requirement` (made if missing).
    `system_site` lets it see Debian's packages (rpmlint needs python3-rpm)."""
    python = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    venv = CACHE / f"{name}-py{python}"
    done_marker = venv / ".installed"
    if done_marker.exists():
        return venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    argv = [SYSTEM_PYTHON, "-m", "venv", *(["--system-site-packages"] if system_site else []),
            str(venv)]  # fmt: skip
    subprocess.run(argv, check=True, env=SYSTEM_ENV)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", requirement],
        capture_output=True, text=True, env=SYSTEM_ENV, timeout=900, check=False,
    )  # fmt: skip
    if pip.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise ToolUnavailable(f"pip install {requirement}: {(pip.stdout + pip.stderr)[-2000:]}")
    done_marker.touch()
    print(f"\n[packaging] {name} installed into {venv}: {time.monotonic() - started:.1f} s",
          file=sys.stderr)  # fmt: skip
    return venv / "bin"
