"""icmp6.py: the ICMPv6 no-route answer of `block-ipv6` (RFC 4443 §3.1, OpenVPN forward.c)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from miragevpn.icmp6 import (
    DESTINATION_UNREACHABLE,
    IPV6_HEADER,
    MIN_MTU,
    NEXT_ICMPV6,
    NO_ROUTE,
    checksum,
    is_ipv6,
    unreachable_reply,
)

ME = ipaddress.IPv6Address("2001:db8:1::2")
THERE = ipaddress.IPv6Address("2001:db8:ffff::80")
PEER = ipaddress.IPv6Address("fd00:8::1")


def ipv6_packet(
    payload: bytes,
    *,
    source: ipaddress.IPv6Address = ME,
    next_header: int = 17,
    first_word: int = 0x6012_3456,
) -> bytes:
    return (
        IPV6_HEADER.pack(first_word, len(payload), next_header, 64, source.packed, THERE.packed)
        + payload
    )


def pseudo_sum(packet: bytes) -> int:
    """The checksum over the ICMPv6 message and its pseudo-header, as a receiver computes it
    (0 when the sender's checksum is right)."""
    source, destination = packet[8:24], packet[24:40]
    body = packet[40:]
    return checksum(source + destination + struct.pack("!I3xB", len(body), NEXT_ICMPV6) + body)


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the one's complement sum of 0001 f203 f4f5 f6f7 is ddf2, checksum 220d
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length: padded with a zero byte


def test_a_udp_packet_gets_a_no_route_answer_quoting_it() -> None:
    packet = ipv6_packet(b"\x12\x34\x00\x35\x00\x0c\x00\x00" + b"data")
    reply = unreachable_reply(packet, PEER)
    assert reply is not None
    first, length, next_header, hops, source, destination = IPV6_HEADER.unpack_from(reply)
    assert first == 0x6012_3456  # version, traffic class and flow label kept, as OpenVPN does
    assert (next_header, hops) == (NEXT_ICMPV6, 64)
    assert (source, destination) == (PEER.packed, ME.packed)  # back to the sender
    assert length == len(reply) - 40 == 8 + len(packet)
    assert (reply[40], reply[41]) == (DESTINATION_UNREACHABLE, NO_ROUTE)
    assert reply[44:48] == b"\x00\x00\x00\x00"  # unused
    assert reply[48:] == packet
    assert pseudo_sum(reply) == 0


def test_the_answer_never_exceeds_1280_bytes_nor_the_tun_mtu() -> None:
    big = ipv6_packet(bytes(range(256)) * 8)  # 2088 bytes
    reply = unreachable_reply(big, PEER, mtu=1500)
    assert reply is not None and len(reply) == MIN_MTU
    assert reply[48:] == big[: MIN_MTU - 48]
    assert pseudo_sum(reply) == 0
    small_mtu = unreachable_reply(big, PEER, mtu=1000)
    assert small_mtu is not None and len(small_mtu) == 1000


def test_no_answer_to_errors_unspecified_or_multicast_sources_or_non_ipv6() -> None:
    error = ipv6_packet(b"\x01\x00\x00\x00\x00\x00\x00\x00", next_header=NEXT_ICMPV6)
    assert unreachable_reply(error, PEER) is None  # RFC 4443 §2.4(e.1)
    echo = ipv6_packet(b"\x80\x00\x00\x00\x00\x01\x00\x01", next_header=NEXT_ICMPV6)
    assert unreachable_reply(echo, PEER) is not None  # an echo request is answered
    unspecified = ipv6_packet(b"x", source=ipaddress.IPv6Address("::"))
    assert unreachable_reply(unspecified, PEER) is None
    multicast = ipv6_packet(b"x", source=ipaddress.IPv6Address("ff02::1"))
    assert unreachable_reply(multicast, PEER) is None
    to_group = ipv6_packet(b"x")[:24] + ipaddress.IPv6Address("ff02::16").packed + b"x"
    assert unreachable_reply(to_group, PEER) is None  # an MLD report to a group
    ipv4 = bytes.fromhex("4500001c000000004011") + bytes(18)
    assert not is_ipv6(ipv4) and unreachable_reply(ipv4, PEER) is None
    assert unreachable_reply(b"\x60" + bytes(20), PEER) is None  # shorter than a header
    assert not is_ipv6(b"")


@given(st.binary(max_size=2000))
def test_any_bytes_give_a_valid_answer_or_none(payload: bytes) -> None:
    packet = ipv6_packet(payload)
    reply = unreachable_reply(packet, PEER)
    assert reply is not None and len(reply) <= MIN_MTU
    assert pseudo_sum(reply) == 0
    assert unreachable_reply(payload, PEER) is None or is_ipv6(payload)
