"""A reader for the classic pcap files `tcpdump -w` writes (Ethernet link type), decoding
each frame as far as the leak tests need: addresses, protocol, ports, ICMP type, TCP MSS."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address


@dataclass(frozen=True)
class Frame:
    """One captured Ethernet frame, decoded as far as the tests need."""

    src_mac: str
    ethertype: int
    src: str = ""
    dst: str = ""
    proto: int = -1  # IP protocol / IPv6 next header
    sport: int = -1
    dport: int = -1
    icmp_type: int = -1
    tcp_flags: int = -1
    mss: int = -1  # the TCP MSS option, when the segment carries one

    def __str__(self) -> str:
        return (
            f"{self.src_mac} type {self.ethertype:#06x} {self.src}:{self.sport} -> "
            f"{self.dst}:{self.dport} proto {self.proto} icmp {self.icmp_type}"
        )


def parse_pcap(data: bytes) -> list[Frame]:
    """Frames of a classic pcap file (Ethernet link type) as tcpdump -w writes it."""
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frames.append(_decode_frame(data[offset : offset + caplen]))
        offset += caplen
    return frames


def _decode_frame(frame: bytes) -> Frame:
    src_mac = ":".join(f"{b:02x}" for b in frame[6:12])
    ethertype = int.from_bytes(frame[12:14], "big")
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        header = (ip[0] & 0x0F) * 4
        proto, l4 = ip[9], ip[header:]
        src, dst = str(A4(ip[12:16])), str(A4(ip[16:20]))
    elif ethertype == 0x86DD and len(ip) >= 40:
        proto, l4 = ip[6], ip[40:]
        src, dst = str(A6(ip[8:24])), str(A6(ip[24:40]))
    else:
        return Frame(src_mac, ethertype)
    sport = dport = icmp_type = tcp_flags = mss = -1
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
    if proto == 6 and len(l4) >= 20:
        tcp_flags, mss = l4[13], _tcp_mss(l4[20 : (l4[12] >> 4) * 4])
    elif proto in (1, 58) and l4:
        icmp_type = l4[0]
    return Frame(src_mac, ethertype, src, dst, proto, sport, dport, icmp_type, tcp_flags, mss)


def _tcp_mss(options: bytes) -> int:
    """The MSS option (kind 2, length 4) of a TCP header's options, or -1 (RFC 9293 3.2)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        if kind == 2 and options[i + 1] == 4 and i + 4 <= len(options):
            return int.from_bytes(options[i + 2 : i + 4], "big")
        i += options[i + 1]
    return -1
