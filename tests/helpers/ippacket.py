"""IPv4 packets for tests: the Internet checksum (RFC 1071), ICMP echo request and reply.

One copy for every test that builds or checks IP packets (the engine interop driver, the
wire injector, the service's namespace tests).
"""

from __future__ import annotations

import struct

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence number


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(
    source: bytes,
    destination: bytes,
    payload_length: int,
    *,
    ident: int = 0,
    protocol: int = 1,
    flags_fragment: int = 0,
    ttl: int = 64,
) -> bytes:
    """A 20-byte IPv4 header with its checksum."""
    header = _IPV4.pack(
        0x45, 0, 20 + payload_length, ident, flags_fragment, ttl, protocol, 0, source, destination
    )
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]


def icmp_echo_request(
    source: bytes, destination: bytes, ident: int, seq: int, payload: bytes = b"miragevpn" * 5
) -> bytes:
    """An IPv4 ICMP echo request with correct checksums."""
    icmp = _ICMP_ECHO.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    return ipv4_header(source, destination, len(icmp), ident=ident) + icmp


def is_echo_reply(packet: bytes, ident: int, seq: int) -> bool:
    """Is this the IPv4 ICMP echo reply to (ident, seq)?"""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + _ICMP_ECHO.size:
        return False
    icmp_type, _code, _sum, got_ident, got_seq = _ICMP_ECHO.unpack_from(packet, ihl)
    return icmp_type == ICMP_ECHO_REPLY and got_ident == ident and got_seq == seq
