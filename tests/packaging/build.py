"""Shared by the packaging tests: build the packages once per run, read them, lint them.

The packages are built by the Makefile's own targets (`make deb`, `make rpm`) from this tree,
with Debian's tools and /usr/bin/python3, so these tests run on the system stack only (the
newest stack would build the same bytes again).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "version").read_text().strip()
DEB = ROOT / "build" / "deb" / f"qubes-miragevpn_{VERSION}_all.deb"
DSC = ROOT / "build" / "deb" / f"qubes-miragevpn_{VERSION}.dsc"
RPM = ROOT / "build" / "rpm" / "RPMS" / "noarch" / f"qubes-miragevpn-{VERSION}-1.noarch.rpm"
SRPM = ROOT / "build" / "rpm" / "SRPMS" / f"qubes-miragevpn-{VERSION}-1.src.rpm"
SPEC = ROOT / "build" / "rpm" / "qubes-miragevpn.spec"
# the distribution's tools only, whatever PATH pytest runs with (a pyenv python3 would
# otherwise answer for /usr/bin/python3's modules)
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}

pytestmark_system_only = pytest.mark.skipif(
    os.environ.get("MIRAGEVPN_STACK") == "newest",
    reason="packages are built and installed with Debian's tools and /usr/bin/python3: "
    "tested once, on the system stack",
)


def run(
    argv: list[str], *, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`argv` with the system's tools; stdout and stderr together; never raises on failure."""
    return subprocess.run(
        argv, cwd=cwd, env=SYSTEM_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def make(target: str) -> float:
    """`make <target>` in the tree; seconds taken. Fails the test with the tail of its output."""
    started = time.monotonic()
    done = run(["make", "--no-print-directory", target])
    assert done.returncode == 0, f"make {target} failed:\n{(done.stdout + done.stderr)[-4000:]}"
    seconds = time.monotonic() - started
    print(f"\n[packaging] make {target}: {seconds:.1f} s")
    return seconds
