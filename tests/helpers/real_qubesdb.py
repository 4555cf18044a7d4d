"""The real QubesDB daemons and Python binding, built from ../shared/qubesdb, as a test fixture.

`RealQubesDB.start(...)` builds (once; pytest's cache keeps the build between runs, one per
interpreter ABI), starts the VM's daemon and its dom0-side peer (vm mode), and puts the binding
on `sys.path`; `stop()` always stops them. Without ../shared/qubesdb, or when start.sh refuses
(not root, a Qubes machine, another suite's daemons already running), the test is skipped with
start.sh's reason. The daemons are one per machine (fixed socket paths), so `start` waits for a
lock file (LOCK, at most LOCK_WAIT seconds) that `stop` releases: two pytest processes (the two
library stacks of `make test`) take turns instead of skipping or clashing.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from qubes_miragevpn.gateway.qubesdb import Binding

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "qubesdb"
SCRIPT_TIMEOUT = 60.0
LOCK = Path("/run/lock/qubes-miragevpn-real-qubesdb.lock")
LOCK_WAIT = 600.0  # seconds: one test module's turn with the daemons takes well under a minute


def _take_lock() -> int:
    """Hold LOCK (an exclusive flock), waiting a bounded time for another run to release it."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.fail(f"the real QubesDB stayed busy (another run) for {LOCK_WAIT:g}s")
            time.sleep(0.2)


def _release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


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
    lock_fd: int  # LOCK, held from start to stop

    @classmethod
    def start(cls, prefix: Path, rundir: Path) -> RealQubesDB:
        if not (SHARED / "build.sh").exists():
            pytest.skip(f"real QubesDB not tested: {SHARED} is absent")
        lock_fd = _take_lock()
        try:
            return cls._start_locked(prefix, rundir, lock_fd)
        except BaseException:
            _release_lock(lock_fd)
            raise

    @classmethod
    def _start_locked(cls, prefix: Path, rundir: Path, lock_fd: int) -> RealQubesDB:
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
            return cls(prefix, rundir, module, module.QubesDB("testvm"), lock_fd)
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
        try:
            self.dom0.close()
            self._run("stop.sh")
        finally:
            _release_lock(self.lock_fd)

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
