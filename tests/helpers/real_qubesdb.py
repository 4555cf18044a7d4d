"""The real QubesDB daemons and Python binding, built from ../shared/qubesdb, as a test fixture.

`RealQubesDB.start(...)` builds (once; pytest's cache keeps the build between runs, one per
interpreter ABI), starts the VM's daemon and its dom0-side peer (vm mode), and puts the binding
on `sys.path`; `stop()` always stops them. Without ../shared/qubesdb, or when start.sh refuses
(not root, a Qubes machine, another suite's daemons already running), the test is skipped with
start.sh's reason. The fixture is one per machine: use it from one pytest process at a time.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from qubes_miragevpn.gateway.qubesdb import Binding

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "qubesdb"
SCRIPT_TIMEOUT = 60.0


def _script(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHARED / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


@dataclass
class RealQubesDB:
    prefix: Path
    rundir: Path
    module: ModuleType
    dom0: Any  # qubesdb.QubesDB("testvm"): the dom0 side, as qubesd writes the VM's keys

    @classmethod
    def start(cls, prefix: Path, rundir: Path) -> RealQubesDB:
        if not (SHARED / "build.sh").exists():
            pytest.skip(f"real QubesDB not tested: {SHARED} is absent")
        built = _script("build.sh", prefix, sys.executable)
        if built.returncode != 0:
            pytest.fail(f"building the real QubesDB failed:\n{built.stdout}\n{built.stderr}")
        started = _script("start.sh", prefix, rundir)
        if started.returncode != 0:
            pytest.skip(f"real QubesDB unavailable: {started.stderr.strip()}")
        try:
            path = str(prefix / "python")
            if path not in sys.path:
                sys.path.insert(0, path)
            module = importlib.import_module("qubesdb")
            if not str(module.__file__).startswith(path):
                raise RuntimeError(f"imported the wrong qubesdb module: {module.__file__}")
            return cls(prefix, rundir, module, module.QubesDB("testvm"))
        except BaseException:
            _script("stop.sh", prefix, rundir)
            raise

    def binding(self) -> Binding:
        return Binding.from_module(self.module)

    def restart_vm(self) -> None:
        """`systemctl restart qubes-db` inside the VM: content kept, clients disconnected."""
        self._run("restart-vm.sh")

    def stop_vm(self) -> None:
        self._run("stop.sh", "vm")

    def start_vm(self) -> None:
        self._run("restart-vm.sh")

    def stop(self) -> None:
        self.dom0.close()
        self._run("stop.sh")

    def link_errors(self) -> list[str]:
        """Log lines saying the VM-dom0 link broke: no test may cause one (in a real qube it
        would cut the VM off dom0's QubesDB updates)."""
        lines: list[str] = []
        for role in ("vm", "dom0-peer"):
            log = self.rundir / "log" / f"{role}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            lines += [
                f"{role}: {line}"
                for line in text.splitlines()
                if "invalid data received from peer" in line or "FATAL" in line
            ]
        return lines

    def _run(self, name: str, *args: str) -> None:
        done = _script(name, self.prefix, self.rundir, *args)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr.strip()}")
