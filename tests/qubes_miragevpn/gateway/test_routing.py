"""The gateway's routes on a real kernel (a namespace): tunnel routes, the server's host route."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from miragevpn.events import RouteSpec, TunnelSettings
from qubes_miragevpn.gateway.routing import FALLBACK_METRIC, GatewayRouting, tunnel_routes
from qubes_miragevpn.nlmsg import NetlinkError
from qubes_miragevpn.rtnl import open_rtnl
from tests.helpers.netns import Netns

T = TypeVar("T")
SERVER = ipaddress.ip_address("198.51.100.1")
GATEWAY = ipaddress.ip_address("10.137.0.5")


def settings(**changes: object) -> TunnelSettings:
    values: dict[str, object] = {
        "ipv4": ipaddress.IPv4Interface("10.8.0.2/24"),
        "ipv4_peer": None,
        "ipv6": None,
        "mtu": 1400,
        "routes": (),
        "redirect_gateway_ipv4": False,
        "redirect_gateway_ipv6": False,
        "remote_address": SERVER,
        "dhcp_options": (),
        "cipher": "AES-256-GCM",
        "key_derivation": "tls-ekm",
    }
    values.update(changes)
    return TunnelSettings(**values)  # type: ignore[arg-type]


def test_all_traffic_goes_into_the_tunnel_whatever_is_pushed() -> None:
    net = ipaddress.ip_network
    assert tunnel_routes(settings()) == [(net("0.0.0.0/1"), None), (net("128.0.0.0/1"), None)]
    six = settings(ipv6=ipaddress.IPv6Interface("fd00:8::2/64"))
    assert [n for n, _ in tunnel_routes(six)][2:] == [net("::/1"), net("8000::/1")]
    pushed = settings(
        routes=(
            RouteSpec(network=net("192.168.7.0/24"), gateway=ipaddress.ip_address("10.8.0.1")),
            RouteSpec(network=net("0.0.0.0/0"), gateway=None),  # covered by the halves
        )
    )
    assert tunnel_routes(pushed)[2:] == [(net("192.168.7.0/24"), ipaddress.ip_address("10.8.0.1"))]


def in_ns(ns: Netns, scenario: Callable[[GatewayRouting], Awaitable[T]]) -> T:
    async def main() -> T:
        routing = GatewayRouting(await open_rtnl())
        try:
            return await scenario(routing)
        finally:
            await routing.close()

    return ns.call(lambda: asyncio.run(main()), timeout=60)


@pytest.fixture
def uplink(netns: Netns) -> Netns:
    """eth0 as Qubes' setup-ip leaves it: a /32, the gateway on-link, the default route."""
    netns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
    netns.run(["ip", "link", "set", "eth0p", "up"])
    netns.run(["ip", "link", "set", "eth0", "up"])
    netns.run(["ip", "addr", "add", "10.137.0.10/32", "dev", "eth0"])
    netns.run(["ip", "route", "add", str(GATEWAY), "dev", "eth0", "scope", "link"])
    netns.run(["ip", "route", "add", "default", "via", str(GATEWAY), "dev", "eth0", "onlink"])
    return netns


@pytest.mark.netns
def test_tunnel_and_server_routes_on_a_real_kernel(uplink: Netns) -> None:
    ns = uplink

    async def scenario(routing: GatewayRouting) -> list[str]:
        tun = routing.open_tun("miragevpn0")
        try:
            assert await routing.ensure_server_route(SERVER, GATEWAY, "eth0")
            assert not await routing.ensure_server_route(SERVER, GATEWAY, "eth0")  # in place
            await routing.configure_tunnel(tun.name, settings())
            await routing.configure_tunnel(tun.name, settings())  # twice: harmless
            first = ns.run(["ip", "-4", "addr", "show", "miragevpn0"]).stdout
            # a new session with another address: only the new one stays
            await routing.configure_tunnel(
                tun.name, settings(ipv4=ipaddress.IPv4Interface("10.8.0.9/24"))
            )
            second = ns.run(["ip", "-4", "addr", "show", "miragevpn0"]).stdout
            routes = ns.run(["ip", "route", "show", "table", "main"]).stdout
            via = ns.run(["ip", "route", "get", str(SERVER)]).stdout
            other = ns.run(["ip", "route", "get", "203.0.113.9"]).stdout
            # the uplink flaps: its routes go, the server's fallback stays (never the tunnel)
            ns.run(["ip", "link", "set", "eth0", "down"])
            down = ns.run(["ip", "route", "get", str(SERVER)], check=False)
            with pytest.raises((OSError, NetlinkError)):
                await routing.ensure_server_route(SERVER, GATEWAY, "eth0")
            ns.run(["ip", "link", "set", "eth0", "up"])
            ns.run(["ip", "route", "add", str(GATEWAY), "dev", "eth0", "scope", "link"])
            for _ in range(40):  # as the daemon's tick: retried until the link has carrier
                try:
                    assert await routing.ensure_server_route(SERVER, GATEWAY, "eth0")  # put back
                    break
                except (OSError, NetlinkError):
                    await asyncio.sleep(0.05)
            back = ns.run(["ip", "route", "get", str(SERVER)]).stdout
            # another server (profile switch): the old one's routes go
            other_server = ipaddress.ip_address("198.51.100.2")
            assert await routing.ensure_server_route(other_server, GATEWAY, "eth0")
            left = ns.run(["ip", "route", "show", str(SERVER)]).stdout
            return [first, second, routes, via, other, down.stdout + down.stderr, back, left]
        finally:
            tun.close()

    first, second, routes, via, other, down, back, left = in_ns(ns, scenario)
    assert "10.8.0.2/24" in first
    assert "10.8.0.9/24" in second and "10.8.0.2" not in second
    assert "0.0.0.0/1 dev miragevpn0" in routes and "128.0.0.0/1 dev miragevpn0" in routes
    assert f"unreachable {SERVER} proto static metric {FALLBACK_METRIC}" in routes
    assert f"{SERVER} via {GATEWAY} dev eth0" in via
    assert "dev miragevpn0" in other  # everything else goes into the tunnel
    assert "miragevpn0" not in down  # with the uplink down: unreachable, not the tunnel
    assert "No route to host" in down  # EHOSTUNREACH: the unreachable route
    assert f"{SERVER} via {GATEWAY} dev eth0" in back
    assert left.strip() == ""
