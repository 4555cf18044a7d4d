"""Policies and facts are frozen values that refuse what cannot describe a real firewall."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from qubes_miragevpn.gateway.policy import (
    QUBES_VIRTUAL_DNS,
    Blocked,
    Connected,
    Connecting,
    Endpoint,
    Facts,
    PolicyError,
    Tunnel,
)

ip = ipaddress.ip_address
UDP = Endpoint(address=ip("198.51.100.1"), port=1194, proto="udp")


def test_facts_defaults_are_qubes() -> None:
    facts = Facts(socket_mark=1)
    assert (facts.uplink, facts.appvm_group) == ("eth0", 2)
    assert facts.virtual_dns == QUBES_VIRTUAL_DNS == (ip("10.139.1.1"), ip("10.139.1.2"))
    assert facts.connected_ips == frozenset()


def test_values_are_frozen_and_comparable() -> None:
    assert Blocked() == Blocked()
    assert Connecting(endpoints=(UDP,)) == Connecting(endpoints=(UDP,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        UDP.port = 1  # type: ignore[misc]
    assert len({Blocked(), Blocked(), Connecting(endpoints=(UDP,))}) == 2


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"socket_mark": 0}, "socket mark"),
        ({"socket_mark": 1 << 32}, "socket mark"),
        ({"socket_mark": 1, "uplink": ""}, "uplink interface"),
        ({"socket_mark": 1, "uplink": "a-very-long-name0"}, "uplink interface"),
        ({"socket_mark": 1, "uplink": "et/h0"}, "uplink interface"),
        ({"socket_mark": 1, "appvm_group": 0}, "group"),
        ({"socket_mark": 1, "connected_ips": frozenset({ip("224.0.0.1")})}, "connected AppVM"),
        ({"socket_mark": 1, "virtual_dns": (ip("fd00::1"),)}, "not IPv4"),
        ({"socket_mark": 1, "uplink_dns": (ip("0.0.0.0"),)}, "uplink DNS"),
    ],
)
def test_bad_facts_say_what_is_wrong(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        Facts(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"address": ip("198.51.100.1"), "port": 0, "proto": "udp"}, "port 0"),
        ({"address": ip("198.51.100.1"), "port": 70000, "proto": "udp"}, "port 70000"),
        ({"address": ip("198.51.100.1"), "port": 1194, "proto": "icmp"}, "protocol"),
        ({"address": ip("255.255.255.255"), "port": 1194, "proto": "udp"}, "unicast"),
        ({"address": ip("::1"), "port": 1194, "proto": "tcp"}, "unicast"),
    ],
)
def test_bad_endpoints_are_refused(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        Endpoint(**kwargs)  # type: ignore[arg-type]


def test_connecting_needs_somewhere_to_go() -> None:
    with pytest.raises(PolicyError, match="at least one endpoint"):
        Connecting(endpoints=())
    assert Connecting(endpoints=(), resolve_via_uplink_dns=True).endpoints == ()


def test_tunnel_checks_and_ipv4_dns() -> None:
    tunnel = Tunnel(
        device="tun0", mtu=1500, ipv6=True, dns=(ip("fd08::1"), ip("10.8.0.1")), endpoint=UDP
    )
    assert tunnel.dns4 == (ip("10.8.0.1"),)
    assert Connected(tunnel=tunnel).tunnel is tunnel
    with pytest.raises(PolicyError, match="MTU"):
        dataclasses.replace(tunnel, mtu=100)
    with pytest.raises(PolicyError, match="tunnel device"):
        dataclasses.replace(tunnel, device="tun 0 ")
    with pytest.raises(PolicyError, match="tunnel DNS"):
        dataclasses.replace(tunnel, dns=(ip("127.0.0.1"),))
