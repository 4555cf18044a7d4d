"""`block-ipv6`: the ICMPv6 "no route to destination" answer to an IPv6 packet (pure bytes).

OpenVPN 2.6 (forward.c `process_ip_header` → `ipv6_send_icmp_unreachable`): with `block-ipv6`
a client does not send the IPv6 packets it reads from the tun; it writes back into the tun an
ICMPv6 Destination Unreachable, code 0 (no route), from the `ifconfig-ipv6` remote address or,
without one, from fe80::7, quoting as much of the packet as fits. Applications then fail at
once instead of waiting for a timeout, and nothing IPv6 goes to the server. The routes that
bring IPv6 to the tun are not this option's business (`redirect-gateway ipv6` does that, as in
OpenVPN's manual).

Where we differ, on purpose (RFC 4443 §2.4): the answer is at most 1280 bytes in all (OpenVPN
quotes up to 1280 bytes after the headers), never larger than the tun MTU; there is no answer
to an ICMPv6 error message (no extension headers before it), to a multicast destination (MLD
reports, router solicitations), to an unspecified or multicast source, nor to a packet too
short to be IPv6. Those are dropped silently.

Forty lines of struct packing: a packet library (scapy, dpkt) would be a large dependency of
the engine for one fixed layout.
"""

from __future__ import annotations

import ipaddress
import struct

IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next, hops
ICMP6_HEADER = struct.Struct("!BBHI")  # type, code, checksum, unused
_PSEUDO = struct.Struct("!16s16sI3xB")  # RFC 8200 §8.1: src, dst, length, zeros, next header
NEXT_ICMPV6 = 58
DESTINATION_UNREACHABLE = 1  # RFC 4443 §3.1 (OpenVPN: OPENVPN_ICMP6_DESTINATION_UNREACHABLE)
NO_ROUTE = 0  # code 0: no route to destination (OPENVPN_ICMP6_DU_NOROUTE)
MIN_MTU = 1280  # RFC 8200 §5; RFC 4443 §2.4(c): an error message never exceeds it
HOP_LIMIT = 64
_HEADERS = IPV6_HEADER.size + ICMP6_HEADER.size  # 48


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def is_ipv6(packet: bytes) -> bool:
    return len(packet) >= 1 and packet[0] >> 4 == 6


def unreachable_reply(
    packet: bytes, source: ipaddress.IPv6Address, *, mtu: int = MIN_MTU
) -> bytes | None:
    """The ICMPv6 no-route answer to the IPv6 `packet`, from `source`; None if there must be
    no answer (see the module doc)."""
    if len(packet) < IPV6_HEADER.size or not is_ipv6(packet):
        return None
    first, _, next_header, _, their_source, destination = IPV6_HEADER.unpack_from(packet)
    sender = ipaddress.IPv6Address(their_source)
    if sender.is_unspecified or sender.is_multicast or destination[0] == 0xFF:
        return None  # §2.4(e.3, e.6): nothing for a multicast destination or a non-unicast source
    icmp_type = packet[IPV6_HEADER.size] if len(packet) > IPV6_HEADER.size else None
    if next_header == NEXT_ICMPV6 and icmp_type is not None and icmp_type < 128:
        return None  # types 0..127 are error messages
    quoted = packet[: max(0, min(mtu, MIN_MTU) - _HEADERS)]
    length = ICMP6_HEADER.size + len(quoted)
    my_source = source.packed
    pseudo = _PSEUDO.pack(my_source, their_source, length, NEXT_ICMPV6)
    message = ICMP6_HEADER.pack(DESTINATION_UNREACHABLE, NO_ROUTE, 0, 0) + quoted
    value = checksum(pseudo + message)
    message = message[:2] + struct.pack("!H", value) + message[4:]
    header = IPV6_HEADER.pack(first, length, NEXT_ICMPV6, HOP_LIMIT, my_source, their_source)
    return header + message
