"""The netlink adapter for real, inside a namespace: tun, addresses, routes, exact undo."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from miragevpn.events import RouteSpec, TunnelSettings
from qubes_miragevpn.netlink import Netlink, Tun, tun_name_pattern
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


def open_in(pair: NetnsPair) -> tuple[Netlink, Tun]:
    def make() -> tuple[Netlink, Tun]:
        netlink = Netlink()
        return netlink, netlink.open_tun(tun_name_pattern("tun"))

    return pair.client.call(make)


def test_apply_and_revert_subnet(pair: NetnsPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qubes_miragevpn.netlink")
    netlink, tun = open_in(pair)
    veth = pair.link.b_if
    before = routes(pair)
    try:
        assert tun.name == "tun0"
        netlink.apply(tun.name, settings())
        assert addresses(pair, "tun0") == {"10.8.0.2/24", "fd00:8::1000/64"}
        link = pair.client.json(["ip", "-j", "link", "show", "dev", "tun0"])[0]
        assert link["mtu"] == 1400
        assert "UP" in link["flags"]
        v4 = routes(pair)
        assert {
            "0.0.0.0/1 tun0",
            "128.0.0.0/1 tun0",
            "192.168.100.0/24 10.8.0.1 tun0 5",
            f"{REMOTE} 10.250.0.1 {veth}",
        } <= v4
        assert "fd00:99::/64 tun0 1024" in routes(pair, "-6")
        logged = [r.getMessage() for r in caplog.records]
        assert "adding route 0.0.0.0/1 dev tun0" in logged
        assert f"adding host route {REMOTE}/32 via 10.250.0.1 dev {veth}" in logged

        netlink.revert()
        assert addresses(pair, "tun0") == set()
        assert routes(pair) == before  # exactly what was there before, nothing more or less
        assert not any("fd00:99" in r for r in routes(pair, "-6"))
    finally:
        netlink.close()
        tun.close()
    links = pair.client.json(["ip", "-j", "link", "show"])
    assert "tun0" not in {link["ifname"] for link in links}


def test_apply_p2p_and_leave_foreign_routes(pair: NetnsPair) -> None:
    # a route that is not ours, identical to one the tunnel wants
    pair.client.run(["ip", "route", "add", "192.168.100.0/24", "via", "10.250.0.1"])
    netlink, tun = open_in(pair)
    p2p = settings(
        ipv4=ipaddress.IPv4Interface("10.8.0.6/32"),
        ipv4_peer=ipaddress.IPv4Address("10.8.0.5"),
        ipv6=None,
        routes=(RouteSpec(network=ipaddress.ip_network("192.168.100.0/24"), gateway=None),),
        redirect_gateway_ipv4=False,
    )
    try:
        netlink.apply(tun.name, p2p)
        assert addresses(pair, tun.name) == {"10.8.0.6/32 peer 10.8.0.5"}
        netlink.apply(tun.name, p2p)  # same settings again: nothing changes
        netlink.revert()
        assert addresses(pair, tun.name) == set()
        assert f"192.168.100.0/24 10.250.0.1 {pair.link.b_if}" in routes(pair)
    finally:
        netlink.close()
        tun.close()


def test_tun_carries_packets(pair: NetnsPair) -> None:
    """A packet the kernel routes into the tun comes out of our fd."""
    netlink, tun = open_in(pair)
    try:
        netlink.apply(tun.name, settings(ipv6=None, routes=(), redirect_gateway_ipv4=False))
        pair.client.run(["ping", "-c", "1", "-W", "1", "10.8.0.77"], check=False)
        packets = []
        while (packet := tun.read()) is not None:
            packets.append(packet)
        icmp = [p for p in packets if p[0] >> 4 == 4 and p[9] == 1]
        assert icmp, packets
        assert icmp[0][16:20] == ipaddress.IPv4Address("10.8.0.77").packed
    finally:
        netlink.close()
        tun.close()
