"""Real proxies for interop tests: Debian's tinyproxy (HTTP CONNECT) and dante's danted (SOCKS5).

Each runs in the foreground inside a namespace the test made, from a config file and PID file
the test wrote in its own directory, and is stopped by its PID (never by name). dante's
`username` method checks the system's password database, so `throwaway_user` creates a user
with a random name and password for one test and removes it afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.netns import Netns, stop_process, wait_until

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
DANTED = shutil.which("danted") or "/usr/sbin/danted"
START_TIMEOUT = 20.0


def available() -> bool:
    return os.path.exists(TINYPROXY) and os.path.exists(DANTED)


@dataclass
class ProxyProcess:
    ns: Netns
    proc: subprocess.Popen[bytes]
    log: Path
    address: ipaddress.IPv4Address
    port: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(ns: Netns, address: ipaddress.IPv4Address, port: int) -> bool:
    out = ns.run(["ss", "-Hltn", f"src {address}:{port}"], check=False).stdout
    return f"{address}:{port}" in out


def _wait(proxy: ProxyProcess) -> ProxyProcess:
    try:
        wait_until(
            lambda: (
                proxy.proc.poll() is not None or _listening(proxy.ns, proxy.address, proxy.port)
            ),
            timeout=START_TIMEOUT,
            what="the proxy listening",
        )
        assert proxy.proc.poll() is None, f"the proxy exited:\n{proxy.log_text()}"
    except BaseException:
        proxy.stop()
        raise
    return proxy


def start_tinyproxy(
    ns: Netns,
    workdir: Path,
    address: ipaddress.IPv4Address,
    *,
    port: int = 3128,
    basic_auth: tuple[str, str] | None = None,
    connect_ports: tuple[int, ...] = (),
) -> ProxyProcess:
    """tinyproxy 1.11 on address:port; `BasicAuth user password` when given (no spaces: its
    config grammar has no quoting there); `ConnectPort`s
    (none: CONNECT to any port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "tinyproxy.log"
    lines = [
        f"Port {port}",
        f"Listen {address}",
        "Timeout 60",
        f'LogFile "{log}"',
        "LogLevel Info",
        f'PidFile "{workdir / "tinyproxy.pid"}"',
        "MaxClients 20",
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    config = workdir / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    out = (workdir / "tinyproxy.stdout").open("ab")
    proc = ns.spawn([TINYPROXY, "-d", "-c", str(config)], stdout=out)
    out.close()
    return _wait(ProxyProcess(ns, proc, log, address, port))


def start_danted(
    ns: Netns,
    workdir: Path,
    address: ipaddress.IPv4Address,
    *,
    port: int = 1080,
    username: bool = False,
    external: ipaddress.IPv4Address | str = "127.0.0.1",
    allow_to: str = "127.0.0.0/8",
) -> ProxyProcess:
    """dante's danted on address:port, CONNECT from `external` to `allow_to` only; method
    `none` or `username` (system users)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "danted.log"
    method = "username" if username else "none"
    config = workdir / "danted.conf"
    config.write_text(
        "\n".join(
            [
                f"logoutput: {log}",
                f"internal: {address} port = {port}",
                f"external: {external}",
                "clientmethod: none",
                f"socksmethod: {method}",
                "user.privileged: root",
                "user.unprivileged: nobody",
                "client pass {\n from: 0.0.0.0/0 to: 0.0.0.0/0\n}",
                f"socks pass {{\n from: 0.0.0.0/0 to: {allow_to}\n command: connect\n"
                " log: connect error\n}",
                "socks block {\n from: 0.0.0.0/0 to: 0.0.0.0/0\n log: connect error\n}",
            ]
        )
        + "\n"
    )
    out = (workdir / "danted.stdout").open("ab")
    proc = ns.spawn([DANTED, "-f", str(config), "-p", str(workdir / "danted.pid")], stdout=out)
    out.close()
    return _wait(ProxyProcess(ns, proc, log, address, port))


@contextmanager
def throwaway_user() -> Iterator[tuple[str, str]]:
    """A system user (no home, no shell) with a random password, removed afterwards."""
    name = f"mvpnproxy{os.getpid()}{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        subprocess.run(
            ["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30
        )
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)
