"""The netlink adapter for real, inside a namespace: tun, addresses, routes, exact undo.

Each scenario runs on one event loop in a thread inside the client namespace (where the
adapter opens its netlink socket).

Hostile pushes (issue 8): a route whose gateway is not on the tunnel, a scoped IPv6 route, an
MTU IPv6 cannot live with, a prefix route standing in for a route the client refused
(`route-nopull`), and routes covering the server itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from miragevpn.events import RouteSpec, TunnelSettings
from qubes_miragevpn.netlink import ApplyReport, Netlink, TunnelSetupError
from qubes_miragevpn.tun import Tun, open_tun, tun_name_pattern
from tests.helpers.netns import NetnsPair, netns_pair_context

pytestmark = pytest.mark.netns

REMOTE = ipaddress.ip_address("198.51.100.7")  # reached through the client's default gateway


def settings(**changes: Any) -> TunnelSettings:
    base: dict[str, Any] = {
        "ipv4": ipaddress.IPv4Interface("10.8.0.2/24"),
        "ipv4_peer": None,
        "ipv6": ipaddress.IPv6Interface("fd00:8::1000/64"),
        "mtu": 1400,
        "routes": (
            RouteSpec(
                network=ipaddress.ip_network("192.168.100.0/24"),
                gateway=ipaddress.ip_address("10.8.0.1"),
                metric=5,
            ),
            RouteSpec(network=ipaddress.ip_network("fd00:99::/64"), gateway=None),
        ),
        "redirect_gateway_ipv4": True,
        "redirect_gateway_ipv6": False,
        "remote_address": REMOTE,
        "dhcp_options": (),
        "cipher": "AES-256-GCM",
        "key_derivation": "tls-ekm",
    }
    base.update(changes)
    return TunnelSettings(**base)


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    with netns_pair_context(client_default_route=True) as pair:
        yield pair


def routes(pair: NetnsPair, family: str = "-4") -> set[str]:
    found = pair.client.json(["ip", "-j", family, "route", "show"])
    return {
        " ".join(
            str(part)
            for part in (r["dst"], r.get("gateway", ""), r.get("dev", ""), r.get("metric", ""))
            if part != ""
        )
        for r in found
    }


def addresses(pair: NetnsPair, ifname: str) -> set[str]:
    links = pair.client.json(["ip", "-j", "addr", "show", "dev", ifname])
    return {
        f"{a['local']}/{a['prefixlen']}" + (f" peer {a['address']}" if "address" in a else "")
        for a in links[0]["addr_info"]
        if a.get("scope") != "link"
    }


Scenario = Callable[[Netlink, Tun], Awaitable[None]]


def run_in(pair: NetnsPair, scenario: Scenario) -> None:
    """Open a tun and the adapter in the client namespace and run `scenario` on one loop
    there; close both afterwards, whatever happens."""

    async def main() -> None:
        netlink = await Netlink.open()
        tun = open_tun(tun_name_pattern("tun"))
        try:
            await scenario(netlink, tun)
        finally:
            await netlink.close()
            tun.close()

    pair.client.call(lambda: asyncio.run(main()), timeout=60)


def test_apply_and_revert_subnet(pair: NetnsPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qubes_miragevpn.netlink")
    veth = pair.link.b_if
    before = routes(pair)

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        assert tun.name == "tun0"
        report = await netlink.apply(tun.name, settings())
        assert report.skipped == ()
        assert addresses(pair, "tun0") == {"10.8.0.2/24", "fd00:8::1000/64"}
        link = pair.client.json(["ip", "-j", "link", "show", "dev", "tun0"])[0]
        assert link["mtu"] == 1400
        assert "UP" in link["flags"]
        v4 = routes(pair)
        assert {
            "10.8.0.0/24 tun0",
            "0.0.0.0/1 tun0",
            "128.0.0.0/1 tun0",
            "192.168.100.0/24 10.8.0.1 tun0 5",
            f"{REMOTE} 10.250.0.1 {veth}",
        } <= v4
        assert "fd00:99::/64 tun0 1024" in routes(pair, "-6")
        assert "fd00:8::/64 tun0 1024" in routes(pair, "-6")
        logged = [r.getMessage() for r in caplog.records]
        assert "adding route 0.0.0.0/1 dev tun0" in logged
        assert f"adding host route {REMOTE}/32 via 10.250.0.1 dev {veth}" in logged

        await netlink.revert()
        assert addresses(pair, "tun0") == set()
        assert routes(pair) == before  # exactly what was there before, nothing more or less
        assert not any("fd00:99" in r for r in routes(pair, "-6"))

    run_in(pair, scenario)
    links = pair.client.json(["ip", "-j", "link", "show"])
    assert "tun0" not in {link["ifname"] for link in links}


def test_apply_p2p_and_leave_foreign_routes(pair: NetnsPair) -> None:
    # a route that is not ours, identical to one the tunnel wants
    pair.client.run(["ip", "route", "add", "192.168.100.0/24", "via", "10.250.0.1"])
    p2p = settings(
        ipv4=ipaddress.IPv4Interface("10.8.0.6/32"),
        ipv4_peer=ipaddress.IPv4Address("10.8.0.5"),
        ipv6=None,
        routes=(RouteSpec(network=ipaddress.ip_network("192.168.100.0/24"), gateway=None),),
        redirect_gateway_ipv4=False,
    )

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        await netlink.apply(tun.name, p2p)
        assert addresses(pair, tun.name) == {"10.8.0.6/32 peer 10.8.0.5"}
        assert f"10.8.0.5 {tun.name}" in routes(pair)
        assert await netlink.apply(tun.name, p2p) == ApplyReport()  # same again: no change
        await netlink.revert()
        assert addresses(pair, tun.name) == set()
        assert f"192.168.100.0/24 10.250.0.1 {pair.link.b_if}" in routes(pair)

    run_in(pair, scenario)


def test_tun_carries_packets(pair: NetnsPair) -> None:
    """A packet the kernel routes into the tun comes out of our fd."""

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        await netlink.apply(tun.name, settings(ipv6=None, routes=(), redirect_gateway_ipv4=False))
        pair.client.run(["ping", "-c", "1", "-W", "1", "10.8.0.77"], check=False)
        packets = []
        while (packet := tun.read()) is not None:
            packets.append(packet)
        icmp = [p for p in packets if p[0] >> 4 == 4 and p[9] == 1]
        assert icmp, packets
        assert icmp[0][16:20] == ipaddress.IPv4Address("10.8.0.77").packed

    run_in(pair, scenario)


# --------------------------------------------------------------------------- issue 8


def test_a_route_that_fails_is_skipped_and_the_rest_applied(pair: NetnsPair) -> None:
    """`route 10.3.0.0 255.255.0.0 1.1.1.1`: the gateway is not on the tunnel (ENETUNREACH);
    `route-ipv6 fe80::%eth0/64`: a scope the kernel cannot take. Both logged and skipped."""
    hostile = settings(
        redirect_gateway_ipv4=False,
        routes=(
            RouteSpec(
                network=ipaddress.ip_network("10.3.0.0/16"),
                gateway=ipaddress.ip_address("1.1.1.1"),
            ),
            RouteSpec(network=ipaddress.ip_network("fe80::%eth0/64"), gateway=None),
            RouteSpec(
                network=ipaddress.ip_network("fd00:77::/64"),
                gateway=ipaddress.ip_address("fe80::1%eth0"),
            ),
            RouteSpec(network=ipaddress.ip_network("192.0.2.0/24"), gateway=None),
        ),
    )

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        report = await netlink.apply(tun.name, hostile)
        skipped = {s.change: s.reason for s in report.skipped}
        assert "adding route 10.3.0.0/16 via 1.1.1.1 dev tun0" in skipped
        assert "ENETUNREACH" in skipped["adding route 10.3.0.0/16 via 1.1.1.1 dev tun0"]
        assert any("fd00:77::/64" in change for change in skipped)
        assert "adding route fe80::%eth0/64 dev tun0" in skipped  # inet_pton refuses the scope
        assert "192.0.2.0/24 tun0" in routes(pair)  # the good route after the bad ones
        assert "10.3.0.0/16" not in " ".join(routes(pair))
        assert addresses(pair, "tun0") == {"10.8.0.2/24", "fd00:8::1000/64"}
        await netlink.revert()
        assert "192.0.2.0/24 tun0" not in routes(pair)

    run_in(pair, scenario)


def test_an_mtu_ipv6_cannot_take_loses_ipv6_not_the_tunnel(pair: NetnsPair) -> None:
    """`tun-mtu 68` with IPv6: IPv4 works at that MTU, IPv6 (minimum 1280) is refused."""

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        report = await netlink.apply(tun.name, settings(mtu=68, redirect_gateway_ipv4=False))
        skipped = {s.change: s.reason for s in report.skipped}
        assert "EINVAL" in skipped["adding address fd00:8::1000/64 to tun0 (no prefix route)"]
        assert "adding route fd00:99::/64 dev tun0" in skipped  # no IPv6 on the link at all
        assert addresses(pair, "tun0") == {"10.8.0.2/24"}
        assert "192.168.100.0/24 10.8.0.1 tun0 5" in routes(pair)  # IPv4 goes on

    run_in(pair, scenario)


def test_no_usable_address_is_a_setup_error(pair: NetnsPair) -> None:
    only_v6 = settings(ipv4=None, mtu=68, routes=(), redirect_gateway_ipv4=False)

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        with pytest.raises(TunnelSetupError, match="no address could be added"):
            await netlink.apply(tun.name, only_v6)
        assert addresses(pair, "tun0") == set()

    run_in(pair, scenario)


def test_route_nopull_is_not_bypassed_by_the_prefix_of_an_address(pair: NetnsPair) -> None:
    """`ifconfig-ipv6 2001:db8:9::2/0` and `topology subnet` + `ifconfig 200.0.0.2 128.0.0.0`
    gave the kernel's prefix routes `default dev tun0` and `128.0.0.0/1 dev tun0`."""
    wide = settings(
        ipv4=ipaddress.IPv4Interface("200.0.0.2/1"),
        ipv6=ipaddress.IPv6Interface("2001:db8:9::2/0"),
        routes=(),
        redirect_gateway_ipv4=False,
    )

    def ours_v6() -> set[str]:  # the kernel's own link-local and multicast routes left out
        return {
            r for r in routes(pair, "-6") if "tun0" in r and not r.startswith(("fe80::", "ff00::"))
        }

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        await netlink.apply(tun.name, wide, allow_routes=False)
        assert addresses(pair, "tun0") == {"200.0.0.2/1", "2001:db8:9::2/0"}
        assert not any("tun0" in r for r in routes(pair)), routes(pair)
        assert ours_v6() == set(), ours_v6()
        await netlink.revert()
        assert addresses(pair, "tun0") == set()

    run_in(pair, scenario)


def test_config_routes_via_the_tunnel_gateway_work_under_route_nopull(pair: NetnsPair) -> None:
    mine = settings(ipv6=None, redirect_gateway_ipv4=False)  # 192.168.100.0/24 via 10.8.0.1

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        report = await netlink.apply(tun.name, mine, allow_routes=False)
        assert report.skipped == ()
        assert "192.168.100.0/24 10.8.0.1 tun0 5" in routes(pair)
        assert "10.8.0.0/24 tun0" not in routes(pair)

    run_in(pair, scenario)


def test_a_route_covering_the_server_gets_the_host_route_first(
    pair: NetnsPair, caplog: pytest.LogCaptureFixture
) -> None:
    """`route <server> 255.255.255.255` and `route 0.0.0.0 0.0.0.0` without redirect-gateway:
    the host route to the server through the pre-tunnel gateway comes first."""
    caplog.set_level(logging.INFO, logger="qubes_miragevpn.netlink")
    veth = pair.link.b_if
    covering = settings(
        ipv6=None,
        redirect_gateway_ipv4=False,
        routes=(
            RouteSpec(network=ipaddress.ip_network("0.0.0.0/0"), gateway=None, metric=1),
            RouteSpec(network=ipaddress.ip_network(f"{REMOTE}/32"), gateway=None),
        ),
    )

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        await netlink.apply(tun.name, covering)
        logged = [r.getMessage() for r in caplog.records]
        host = f"adding host route {REMOTE}/32 via 10.250.0.1 dev {veth}"
        assert logged.index(host) < logged.index("adding route 0.0.0.0/0 dev tun0 metric 1")
        found = pair.client.run(["ip", "route", "get", str(REMOTE)]).stdout
        assert f"dev {veth}" in found, found  # the server is still reached outside
        assert f"{REMOTE} 10.250.0.1 {veth}" in routes(pair)
        await netlink.revert()
        assert str(REMOTE) not in " ".join(routes(pair))

    run_in(pair, scenario)


def test_a_route_covering_the_server_is_refused_without_a_path(pair: NetnsPair) -> None:
    unreachable = ipaddress.ip_address("203.0.113.9")  # no route to it from the client
    pair.client.run(["ip", "route", "del", "default"])
    covering = settings(
        ipv6=None,
        remote_address=unreachable,
        routes=(RouteSpec(network=ipaddress.ip_network("203.0.113.0/24"), gateway=None),),
    )

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        report = await netlink.apply(tun.name, covering)
        refused = [s for s in report.skipped if "would cover the server" in s.reason]
        assert {s.change for s in refused} == {
            "adding route 128.0.0.0/1 dev tun0",
            "adding route 203.0.113.0/24 dev tun0",
        }
        assert "0.0.0.0/1 tun0" in routes(pair)  # the half without the server is fine

    run_in(pair, scenario)


@pytest.mark.parametrize(
    ("ipv4", "peer", "why"),
    [
        ("10.250.0.1/24", None, "is inside a subnet connected on"),  # the LAN gateway's address
        ("10.250.0.2/30", None, "is already an address of this system"),  # our own LAN address
        (f"{REMOTE}/24", None, "is the server's address"),
        ("10.8.0.6/32", "10.250.0.1", "is inside a subnet connected on"),  # peer on the LAN
    ],
)
def test_a_tunnel_address_that_collides_with_the_system_is_refused(
    pair: NetnsPair, ipv4: str, peer: str | None, why: str
) -> None:
    """`ifconfig` accepted the LAN gateway's own address and the server's address."""
    colliding = settings(
        ipv4=ipaddress.IPv4Interface(ipv4),
        ipv4_peer=ipaddress.IPv4Address(peer) if peer else None,
        routes=(),
        redirect_gateway_ipv4=False,
    )
    before = routes(pair)

    async def scenario(netlink: Netlink, tun: Tun) -> None:
        report = await netlink.apply(tun.name, colliding)
        refused = [s for s in report.skipped if s.change.startswith("adding address ")]
        assert len(refused) == 1 and why in refused[0].reason, report.skipped
        assert addresses(pair, "tun0") == {"fd00:8::1000/64"}  # IPv6 alone carries on
        assert routes(pair) == before  # nothing for the refused address
        with pytest.raises(TunnelSetupError, match="no address could be added"):
            await netlink.apply(tun.name, replace(colliding, ipv6=None))
        assert routes(pair) == before

    run_in(pair, scenario)
