"""The route-netlink adapter: against a fake kernel (timeouts, late answers, one request in
flight) and against the real one in a namespace the test creates; and no pyroute2 at run time."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from qubes_miragevpn import nlmsg
from qubes_miragevpn.nlmsg import IFA_F_NODAD, IFA_F_NOPREFIXROUTE, RTNH_F_ONLINK, NetlinkError
from qubes_miragevpn.rtnl import KernelRtnl, RoutePath, open_rtnl
from tests.helpers.netns import Netns

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
V4, V6 = socket.AF_INET, socket.AF_INET6


# ------------------------------------------------------------------ a fake kernel


def link_answer(seq: int, index: int, name: str, mtu: int) -> bytes:
    body = struct.pack("=BxHiII", 0, 0, index, 0, 0)
    body += nlmsg.encode_attr(nlmsg.IFLA_IFNAME, name.encode() + b"\0")
    body += nlmsg.encode_attr(nlmsg.IFLA_MTU, struct.pack("=I", mtu))
    return struct.pack("=IHHII", 16 + len(body), nlmsg.RTM_NEWLINK, 0, seq, 0) + body


def ack(seq: int, code: int = 0) -> bytes:
    echoed = struct.pack("=IHHII", 16, nlmsg.RTM_GETLINK, 0, seq, 0)
    return struct.pack("=IHHIIi", 36, nlmsg.NLMSG_ERROR, 0, seq, 0, -code) + echoed


def seq_of(request: bytes) -> int:
    return int(struct.unpack_from("=I", request, 8)[0])


def with_fake_kernel(
    scenario: Callable[[KernelRtnl, socket.socket], Awaitable[T]], timeout: float = 0.3
) -> T:
    """Run `scenario(rtnl, kernel)` with the adapter on one end of a datagram socket pair; the
    test plays the kernel on the other."""

    async def main() -> T:
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        kernel.setblocking(False)
        rtnl = KernelRtnl(ours, timeout=timeout)
        try:
            return await scenario(rtnl, kernel)
        finally:
            await rtnl.close()
            kernel.close()

    return asyncio.run(main())


def test_a_silent_kernel_times_out_and_its_late_answer_is_dropped() -> None:
    async def scenario(rtnl: KernelRtnl, kernel: socket.socket) -> tuple[str, object]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError) as caught:
            await rtnl.link_info(5)
        first = seq_of(await loop.sock_recv(kernel, 4096))
        # the late answer to the first request, then the second request's own
        second_request = asyncio.ensure_future(rtnl.link_info(5))
        second = seq_of(await loop.sock_recv(kernel, 4096))
        assert second != first
        await loop.sock_sendall(kernel, link_answer(first, 5, "stale0", 1000) + ack(first))
        await loop.sock_sendall(kernel, link_answer(second, 5, "tun0", 1400))
        await loop.sock_sendall(kernel, ack(second))
        assert caught.value.errno == errno.ETIMEDOUT
        return str(caught.value.strerror), await second_request

    words, answer = with_fake_kernel(scenario)
    assert words == "the kernel did not answer looking up link #5 within 0.3 s"
    assert answer == ("tun0", 1400)


def test_one_request_in_flight_and_refusals_raise_with_their_errno() -> None:
    async def scenario(rtnl: KernelRtnl, kernel: socket.socket) -> list[object]:
        loop = asyncio.get_running_loop()
        calls = [
            asyncio.ensure_future(rtnl.link_info(1)),
            asyncio.ensure_future(rtnl.link_set(1, mtu=1400)),
            asyncio.ensure_future(rtnl.link_index("gone0")),
        ]
        seen: list[object] = []
        first = seq_of(await loop.sock_recv(kernel, 4096))
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):  # the second waits for the first's answer
            kernel.recv(4096)
        await loop.sock_sendall(kernel, link_answer(first, 1, "lo", 65536) + ack(first))
        second = seq_of(await loop.sock_recv(kernel, 4096))
        await loop.sock_sendall(kernel, ack(second, errno.EINVAL))
        third = seq_of(await loop.sock_recv(kernel, 4096))
        await loop.sock_sendall(kernel, ack(third, errno.ENODEV))
        for call in calls:
            try:
                seen.append(await call)
            except NetlinkError as e:
                seen.append((e.code, str(e)))
        assert [first, second, third] == [1, 2, 3]
        return seen

    assert with_fake_kernel(scenario) == [
        ("lo", 65536),
        (errno.EINVAL, "the kernel refused setting link #1 mtu 1400: Invalid argument (EINVAL)"),
        None,  # ENODEV: no such link
    ]


def test_garbage_from_the_kernel_is_an_oserror_that_says_so() -> None:
    async def scenario(rtnl: KernelRtnl, kernel: socket.socket) -> str:
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(rtnl.link_info(1))
        await loop.sock_recv(kernel, 4096)
        await loop.sock_sendall(kernel, b"\x30\x00\x00\x00 too short")
        with pytest.raises(OSError) as caught:
            await call
        assert caught.value.errno == errno.EBADMSG
        return str(caught.value)

    assert "the kernel's answer to looking up link #1 is malformed" in with_fake_kernel(scenario)


# ------------------------------------------------------------------ the real kernel


def in_ns(netns: Netns, scenario: Callable[[KernelRtnl], Awaitable[T]]) -> T:
    async def main() -> T:
        rtnl = await open_rtnl()
        try:
            return await scenario(rtnl)
        finally:
            await rtnl.close()

    return netns.call(lambda: asyncio.run(main()), timeout=60)


@pytest.mark.netns
def test_links_addresses_routes_on_a_real_kernel(netns: Netns) -> None:
    netns.run(["ip", "link", "set", "lo", "up"])
    netns.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    netns.run(["ip", "link", "set", "d1", "up"])

    async def scenario(rtnl: KernelRtnl) -> dict[str, object]:
        found: dict[str, object] = {}
        d0 = await rtnl.link_index("d0")
        assert d0 is not None
        found["missing"] = (await rtnl.link_index("nothing-here"), await rtnl.link_info(9999))
        await rtnl.link_set(d0, mtu=1400, up=True)
        found["link"] = await rtnl.link_info(d0)
        await rtnl.addr(
            "add", index=d0, family=V4, address="10.8.0.2", prefixlen=24, flags=IFA_F_NOPREFIXROUTE
        )
        await rtnl.addr(
            "add",
            index=d0,
            family=V4,
            address="10.8.1.1",
            local="10.8.1.2",
            prefixlen=32,
            flags=IFA_F_NOPREFIXROUTE,
        )
        await rtnl.addr(
            "add",
            index=d0,
            family=V6,
            address="fd00:8::2",
            prefixlen=64,
            flags=IFA_F_NOPREFIXROUTE | IFA_F_NODAD,
        )
        found["addr"] = netns.json(["ip", "-j", "addr", "show", "dev", "d0"])[0]["addr_info"]
        found["prefix routes"] = netns.run(["ip", "route", "show", "dev", "d0"]).stdout
        with pytest.raises(NetlinkError) as twice:
            await rtnl.addr("add", index=d0, family=V4, address="10.8.0.2", prefixlen=24)
        found["twice"] = twice.value.code
        await rtnl.route("add", dst="10.8.0.0/24", family=V4, oif=d0, scope=nlmsg.RT_SCOPE_LINK)
        await rtnl.route(
            "add",
            dst="192.168.6.0/24",
            family=V4,
            oif=d0,
            gateway="10.77.0.1",
            flags=RTNH_F_ONLINK,
            priority=7,
        )
        await rtnl.route("add", dst="fd00:99::/64", family=V6, oif=d0)
        with pytest.raises(NetlinkError) as unreachable:  # the gateway is not on any link
            await rtnl.route("add", dst="10.3.0.0/16", family=V4, oif=d0, gateway="1.1.1.1")
        found["unreachable gateway"] = unreachable.value.code
        await rtnl.route("replace", dst="0.0.0.0/1", family=V4, oif=d0)
        await rtnl.route("replace", dst="0.0.0.0/1", family=V4, oif=d0)  # twice: harmless
        found["routes"] = netns.run(["ip", "route", "show"]).stdout
        found["via"] = await rtnl.route_get(ipaddress.ip_address("192.168.6.9"), V4)
        found["onlink"] = await rtnl.route_get(ipaddress.ip_address("10.8.0.9"), V4)
        found["local"] = await rtnl.route_get(ipaddress.ip_address("10.8.0.2"), V4)
        found["v6"] = await rtnl.route_get(ipaddress.ip_address("fd00:99::5"), V6)
        await rtnl.route("del", dst="192.168.6.0/24", family=V4, oif=d0, gateway="10.77.0.1")
        await rtnl.route("del", dst="10.8.0.0/24", family=V4, oif=d0, scope=nlmsg.RT_SCOPE_LINK)
        with pytest.raises(NetlinkError) as gone:
            await rtnl.route("del", dst="10.8.0.0/24", family=V4, oif=d0)
        found["gone"] = gone.value.code
        await rtnl.addr("del", index=d0, family=V4, address="10.8.0.2", prefixlen=24)
        await rtnl.addr("del", index=d0, family=V6, address="fd00:8::2", prefixlen=64)
        found["after"] = netns.run(["ip", "addr", "show", "dev", "d0"]).stdout
        found["routes after"] = netns.run(["ip", "route", "show"]).stdout
        return found

    found = in_ns(netns, scenario)
    d0 = int(netns.json(["ip", "-j", "link", "show", "dev", "d0"])[0]["ifindex"])
    assert found["missing"] == (None, None)
    assert found["link"] == ("d0", 1400)
    assert "UP" in netns.json(["ip", "-j", "link", "show", "dev", "d0"])[0]["flags"]
    addr = {(a["local"], a["prefixlen"], a.get("address")): a for a in found["addr"]}  # type: ignore[attr-defined]
    assert addr[("10.8.0.2", 24, None)]["noprefixroute"]
    assert addr[("10.8.1.2", 32, "10.8.1.1")]["noprefixroute"]
    assert addr[("fd00:8::2", 64, None)]["noprefixroute"] and addr[("fd00:8::2", 64, None)]["nodad"]
    assert "10.8.0.0/24" not in str(found["prefix routes"])  # no prefix route, none peer route
    assert found["twice"] == errno.EEXIST
    assert found["unreachable gateway"] == errno.ENETUNREACH
    routes = str(found["routes"])
    assert "10.8.0.0/24 dev d0 proto static scope link" in routes
    assert "192.168.6.0/24 via 10.77.0.1 dev d0 proto static metric 7 onlink" in routes
    assert routes.count("0.0.0.0/1 dev d0 proto static") == 1
    assert found["via"] == RoutePath(ipaddress.ip_address("10.77.0.1"), d0, local=False)
    assert found["onlink"] == RoutePath(None, d0, local=False)
    assert found["local"] == RoutePath(None, 1, local=True)
    assert found["v6"] == RoutePath(None, d0, local=False)
    assert found["gone"] == errno.ESRCH
    assert "10.8.0.2" not in str(found["after"]) and "fd00:8::2" not in str(found["after"])
    assert "10.8.1.2 peer 10.8.1.1/32" in str(found["after"])
    assert "192.168.6.0" not in str(found["routes after"])


@pytest.mark.netns
def test_the_socket_belongs_to_the_namespace_it_was_opened_in(netns: Netns) -> None:
    """Opened inside the namespace, the adapter sees its links, not the host's."""
    netns.run(["ip", "link", "add", "only-here0", "type", "veth", "peer", "name", "only-here1"])

    async def scenario(rtnl: KernelRtnl) -> tuple[int | None, int | None]:
        return await rtnl.link_index("only-here0"), await rtnl.link_index("lo")

    here, lo = in_ns(netns, scenario)
    assert here is not None and lo == 1
    assert asyncio.run(_index_outside("only-here0")) is None


async def _index_outside(name: str) -> int | None:
    rtnl = await open_rtnl()
    try:
        return await rtnl.link_index(name)
    finally:
        await rtnl.close()


# ------------------------------------------------------------------ no pyroute2 at run time

RUN_PATH = """
import asyncio, sys
import qubes_miragevpn.gateway.cli, qubes_miragevpn.unixclient, qubes_miragevpn.cli
# what gateway.cli's run() and the client's netlink set-up import when they start
import qubes_miragevpn.gateway.routing, qubes_miragevpn.gateway.conntrack
import qubes_miragevpn.netlink, qubes_miragevpn.session, qubes_miragevpn.files
import qubes_miragevpn.gateway.profiles, qubes_miragevpn.gateway.settings
from qubes_miragevpn.rtnl import open_rtnl

async def main():
    rtnl = await open_rtnl()
    await rtnl.link_index("lo")
    await rtnl.close()

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")
assert not loaded, loaded
print("ok")
"""


def test_the_daemon_and_the_client_run_without_pyroute2() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", RUN_PATH], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
