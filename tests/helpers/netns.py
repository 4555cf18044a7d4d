"""Network namespaces for tests: create, connect with veth pairs, run programs inside, clean up.

Every namespace gets a unique name (`mvpn-<role>-<random>`), so parallel runs and leftovers from a
crashed run never collide. Everything is undone on exit even when a test fails: spawned processes
are stopped by PID (terminate, bounded wait, kill), then any process still inside the namespace
(`ip netns pids`) is killed by PID, then the namespace is deleted, which also deletes its veth and
tun devices. Nothing is configured in the root namespace.

    with Netns.create("server") as server, Netns.create("client") as client:
        link = connect(server, client)              # 10.250.0.1/30 <-> 10.250.0.2/30
        proc = server.spawn(["openvpn", ...])
        client.run(["ping", "-c1", str(link.a_address.ip)])

Fixtures: `netns_pair` (server and client joined by a veth pair, no default route in the client),
`netns` (one empty namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import pytest

PREFIX = "mvpn-"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
STOP_TIMEOUT = 5.0  # seconds a process gets between SIGTERM and SIGKILL

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def wait_until(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something truthy (returned), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM `proc` (by PID), wait at most `timeout`, then SIGKILL. Returns its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Netns:
    """One network namespace we created; `close()` (or the context manager) removes it."""

    name: str
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def create(cls, role: str) -> Netns:
        name = f"{PREFIX}{role}-{secrets.token_hex(4)}"
        _ip("netns", "add", name)
        ns = cls(name)
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            ns.close()
            raise
        return ns

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` as a command line that runs inside this namespace."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the namespace to completion (bounded by `timeout`), capturing output."""
        try:
            return subprocess.run(
                self.argv(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=check,
                input=input,
            )
        except subprocess.CalledProcessError as e:
            raise AssertionError(
                f"in {self.name}: {' '.join(argv)} exited {e.returncode}\n"
                f"stdout: {e.stdout}\nstderr: {e.stderr}"
            ) from e

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.STDOUT,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the namespace; it is stopped by PID when the namespace is closed.

        `ip netns exec` execs the program in place, so the Popen's PID is the program's."""
        proc = subprocess.Popen(self.argv(argv), stdout=stdout, stderr=stderr, stdin=stdin, env=env)
        self.processes.append(proc)
        return proc

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run `fn` in a thread that has entered this namespace; return its result.

        Sockets and tun devices that `fn` creates stay in the namespace afterwards, so objects
        made here (an `IPRoute`, a tun fd) can then be used from any thread."""
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as e:
                error.append(e)

        thread = threading.Thread(target=target, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in {self.name} did not finish within {timeout:g}s")
        if error:
            raise error[0]
        return result[0]

    def json(self, argv: Sequence[str]) -> Any:
        """Run an `ip -j ...` style command and parse its JSON output."""
        return json.loads(self.run(argv).stdout or "null")

    def pids(self) -> list[int]:
        """PIDs of every process currently inside the namespace."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(word) for word in out.split()]

    def close(self) -> None:
        """Stop our processes (by PID), kill stragglers inside the namespace, delete it."""
        if self.closed:
            return
        self.closed = True
        for proc in reversed(self.processes):
            stop_process(proc)
        for _ in range(3):  # processes forked by ours (bounded retries)
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _ip("netns", "delete", self.name, check=False)


@dataclass(frozen=True)
class Link:
    """A veth pair: `a_if` in namespace a with `a_address`, `b_if` in b with `b_address`."""

    a_if: str
    b_if: str
    a_address: ipaddress.IPv4Interface
    b_address: ipaddress.IPv4Interface


def connect(
    a: Netns,
    b: Netns,
    *,
    a_address: str = "10.250.0.1/30",
    b_address: str = "10.250.0.2/30",
    b_default_via_a: bool = False,
) -> Link:
    """Join `a` and `b` with a veth pair, address both ends, bring them up.

    With `b_default_via_a`, b's default route goes to a's address (a behaves as b's router)."""
    tag = secrets.token_hex(3)
    a_if, b_if = f"mv{tag}a", f"mv{tag}b"  # <= 15 characters (IFNAMSIZ)
    _ip("link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name)
    link = Link(a_if, b_if, ipaddress.IPv4Interface(a_address), ipaddress.IPv4Interface(b_address))
    for ns, ifname, address in ((a, a_if, link.a_address), (b, b_if, link.b_address)):
        ns.run(["ip", "addr", "add", str(address), "dev", ifname])
        ns.run(["ip", "link", "set", ifname, "up"])
    if b_default_via_a:
        b.run(["ip", "route", "add", "default", "via", str(link.a_address.ip)])
    return link


@dataclass(frozen=True)
class Link6:
    """An IPv6-only veth pair (no IPv4 address on either end)."""

    a_if: str
    b_if: str
    a_address: ipaddress.IPv6Interface
    b_address: ipaddress.IPv6Interface


def no_dad(*namespaces: Netns) -> None:
    """No duplicate address detection in these namespaces (for interfaces made after this):
    addresses, link-local ones too, are usable at once instead of "tentative" for ~2 s."""
    for ns in namespaces:
        ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"])  # fmt: skip


def connect6(
    a: Netns,
    b: Netns,
    *,
    a_address: str = "fd00:250::1/64",
    b_address: str = "fd00:250::2/64",
) -> Link6:
    """Join `a` and `b` with an IPv6-only veth pair (DAD off in both namespaces)."""
    no_dad(a, b)
    tag = secrets.token_hex(3)
    a_if, b_if = f"mv{tag}a", f"mv{tag}b"
    _ip("link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name)
    link = Link6(a_if, b_if, ipaddress.IPv6Interface(a_address), ipaddress.IPv6Interface(b_address))
    for ns, ifname, address in ((a, a_if, link.a_address), (b, b_if, link.b_address)):
        ns.run(["ip", "-6", "addr", "add", str(address), "dev", ifname, "nodad"])
        ns.run(["ip", "link", "set", ifname, "up"])
    return link


def link_local(ns: Netns, ifname: str) -> ipaddress.IPv6Address:
    """The fe80:: address of `ifname` (bounded wait: the kernel adds it when the link is up)."""

    def find() -> ipaddress.IPv6Address | None:
        for info in ns.json(["ip", "-j", "-6", "addr", "show", "dev", ifname, "scope", "link"]):
            for a in info.get("addr_info", []):
                if "local" in a and "tentative" not in a:  # `ip -j` may list empty entries
                    return ipaddress.IPv6Address(a["local"])
        return None

    return wait_until(find, 10.0, what=f"a link-local address on {ifname}")


@dataclass(frozen=True)
class NetnsPair:
    server: Netns
    client: Netns
    link: Link  # a = server end, b = client end

    @property
    def server_address(self) -> ipaddress.IPv4Address:
        return self.link.a_address.ip

    @property
    def client_address(self) -> ipaddress.IPv4Address:
        return self.link.b_address.ip


@contextlib.contextmanager
def netns_pair_context(*, client_default_route: bool = False) -> Iterator[NetnsPair]:
    """A server and a client namespace joined by a veth pair; removed on exit.

    Without `client_default_route` the client can reach only the veth subnet, so anything it
    reaches beyond that (10.8.0.1 ...) went through the tunnel. With it, the client's default
    route points at the server end (needed to test redirect-gateway's "original gateway")."""
    with Netns.create("server") as server, Netns.create("client") as client:
        link = connect(server, client, b_default_via_a=client_default_route)
        yield NetnsPair(server, client, link)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    with netns_pair_context() as pair:
        yield pair


@pytest.fixture
def netns() -> Iterator[Netns]:
    """One empty namespace (loopback up)."""
    with Netns.create("test") as ns:
        yield ns
