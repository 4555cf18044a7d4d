"""Statistics and tunnel state in words."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import replace

from miragevpn.config.model import ProxyCredentials, Secret, SocksProxy, Transport
from miragevpn.events import DhcpOption, ProxyRoute, RouteSpec
from qubes_miragevpn.describe import (
    describe_duration,
    describe_settings,
    describe_state,
    describe_stats,
    describe_udp_stats,
    drop_reason_words,
)
from qubes_miragevpn.hooks import Endpoint, Phase, SessionState
from qubes_miragevpn.transport import UdpStats
from tests.helpers.fake_client import SETTINGS, FakeStats


class DropReason(enum.Enum):  # the shape of the engine's enum (contract 2)
    AUTHENTICATION = "failed authentication"
    REPLAYED = "replayed"


def test_describe_stats_in_words_and_defensive() -> None:
    stats = FakeStats(packets_received=5, bytes_received=700, packets_sent=2, bytes_sent=90)
    stats.drop("AuthenticationError")
    stats.drop("AuthenticationError")
    stats.drop("ReplayError")
    stats.drop("DecodeError")
    stats.drop("unknown key id")
    assert describe_stats(stats) == (
        "statistics: in 5 packets (700 bytes), out 2 packets (90 bytes), "
        "tunnel packets in 0 out 0, dropped 5 (failed authentication 2, malformed 1, "
        "replayed 1, unknown key id 1)"
    )

    class Partial:  # an engine whose Stats lacks some counters (or has moved them)
        packets_received = 3
        dropped: dict[str, int] = {}  # noqa: RUF012

    assert describe_stats(Partial()) == "statistics: in 3 packets, dropped 0"
    assert describe_stats(None) == "statistics: not available"


def test_decompressed_packets_are_counted_when_there_are_some() -> None:
    from miragevpn.clientstate import Stats as EngineStats
    from miragevpn.errors import DropReason as EngineDropReason

    stats = EngineStats()
    assert "decompressed" not in describe_stats(stats)
    stats.decompression.packets, stats.decompression.bytes_in = 3, 120
    stats.decompression.bytes_out = 4200
    stats.drop(EngineDropReason.DECOMPRESSION_FAILED)
    assert describe_stats(stats) == (
        "statistics: in 0 packets (0 bytes), out 0 packets (0 bytes), tunnel packets in 0 out 0, "
        "decompressed 3 packets (120 -> 4200 bytes), "
        "dropped 1 (corrupt or oversized compressed data 1)"
    )


def test_drop_reasons_from_an_enum_are_their_values() -> None:
    class Stats:
        dropped = {DropReason.AUTHENTICATION: 2, DropReason.REPLAYED: 0, "replayed": 1}  # noqa: RUF012

    assert drop_reason_words(DropReason.REPLAYED) == "replayed"
    assert drop_reason_words("DecodeError") == "malformed"
    # the same words from two spellings are one count; zero counts are left out
    assert describe_stats(Stats()) == (
        "statistics: dropped 3 (failed authentication 2, replayed 1)"
    )


def test_describe_settings_says_what_the_tunnel_is() -> None:
    settings = replace(
        SETTINGS,
        ipv6=ipaddress.IPv6Interface("fd00::2/64"),
        routes=(RouteSpec(network=ipaddress.ip_network("192.0.2.0/24"), gateway=None),),
        redirect_gateway_ipv4=True,
        dhcp_options=(DhcpOption(kind="DNS", value="10.8.0.1"),),
    )
    assert describe_settings("tun0", settings) == (
        "tun0, 10.8.0.2/24, fd00::2/64, mtu 1500, cipher AES-256-GCM (tls-ekm), "
        "routes 192.0.2.0/24, all traffic through the tunnel, dhcp DNS 10.8.0.1"
    )


def test_describe_udp_stats() -> None:
    stats = UdpStats(received=10, receive_batches=4, sent=7, gso_sends=1)
    assert describe_udp_stats(stats) == (
        "UDP socket: received 10 in 4 wake-ups (2.5 per wake-up), sent 7 (1 GSO sendmsg), "
        "errors 0 in 0 out, waited for the socket 0, dropped on a full queue 0"
    )


def test_describe_duration() -> None:
    assert [describe_duration(s) for s in (-1, 0, 4.9, 65, 3600, 3 * 86400 + 7200)] == [
        "0s",
        "0s",
        "4s",
        "1m 5s",
        "1h 0m",
        "3d 2h",
    ]


def test_describe_state_in_each_phase() -> None:
    endpoint = Endpoint(
        address=ipaddress.ip_address("192.0.2.1"), port=1194, transport=Transport.UDP
    )
    starting = SessionState(phase=Phase.STARTING, since=100.0)
    assert describe_state(starting, 100.5) == "starting for 0s"
    connecting = SessionState(phase=Phase.CONNECTING, since=100.0, endpoint=endpoint)
    assert describe_state(connecting, 103.0) == (
        "connecting for 3s to 192.0.2.1 port 1194 over UDP"
    )
    negotiating = replace(connecting, phase=Phase.NEGOTIATING, detail="TLS handshake")
    assert describe_state(negotiating, 101.0) == (
        "connected, negotiating for 1s with 192.0.2.1 port 1194 over UDP: TLS handshake"
    )
    up = replace(connecting, phase=Phase.UP, settings=SETTINGS)
    assert describe_state(up, 225.0, "tun0") == (
        "tunnel up for 2m 5s with 192.0.2.1 port 1194 over UDP: tun0, 10.8.0.2/24, mtu 1500, "
        "cipher AES-256-GCM (tls-ekm)"
    )
    proxied = replace(
        connecting,
        endpoint=replace(
            endpoint,
            port=9050,
            transport=Transport.TCP,
            via=ProxyRoute(
                proxy=SocksProxy("192.0.2.1", 9050, ProxyCredentials("u", Secret(b"pw"))),
                host="vpn.example",
                port=443,
            ),
        ),
    )
    assert describe_state(proxied, 103.0) == (
        "connecting for 3s to 192.0.2.1 port 9050 over TCP (SOCKS5 proxy) to vpn.example port 443"
    )
    restarting = replace(up, phase=Phase.RESTARTING, detail="ping-restart")
    assert describe_state(restarting, 100.0, "tun0") == "reconnecting for 0s: ping-restart"
    ended = replace(up, phase=Phase.ENDED, detail="server halted")
    assert describe_state(ended, 100.0) == "ended for 0s: server halted"
