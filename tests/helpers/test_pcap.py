"""The pcap reader of the leak tests, and the topology capture's sys-vpn filter."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.helpers.pcap import parse_pcap
from tests.helpers.qubes_topology import SYSVPN_MAC, Capture

SYSVPN = bytes.fromhex(SYSVPN_MAC.replace(":", ""))
BACKEND = b"\xfe\xff\xff\xff\xff\xff"


def pcap(*frames: bytes) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    return header + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)


def ether(src: bytes, ethertype: int, payload: bytes) -> bytes:
    return BACKEND + src + ethertype.to_bytes(2, "big") + payload


def tcp_syn(sport: int, dport: int, mss: int) -> bytes:
    options = b"\x01\x01" + b"\x02\x04" + mss.to_bytes(2, "big") + b"\x01\x01\x01\x00"
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, 0x02, 65535, 0, 0) + options


def ipv4(proto: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
    return bytes([0x45, 0]) + (20 + len(l4)).to_bytes(2, "big") + bytes(5) + bytes(
        [proto]
    ) + bytes(2) + src + dst + l4  # fmt: skip


def ipv6(next_header: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
    return (
        b"\x60\x00\x00\x00" + len(l4).to_bytes(2, "big") + bytes([next_header, 64]) + src + dst + l4
    )


def test_parse_pcap_decodes_ipv4_tcp_with_mss_ipv6_icmp_and_arp() -> None:
    syn = ether(SYSVPN, 0x0800, ipv4(6, bytes([10, 137, 0, 10]), bytes([198, 51, 100, 1]),
                                     tcp_syn(40000, 1194, 1360)))  # fmt: skip
    ns = ether(SYSVPN, 0x86DD, ipv6(58, bytes(16), bytes.fromhex("ff02" + "00" * 13 + "01"),
                                    bytes([135, 0, 0, 0])))  # fmt: skip
    arp = ether(SYSVPN, 0x0806, bytes(28))
    reply = ether(BACKEND, 0x0800, ipv4(17, bytes([198, 51, 100, 1]), bytes([10, 137, 0, 10]),
                                        struct.pack("!HHHH", 1194, 40000, 8, 0)))  # fmt: skip
    frames = parse_pcap(pcap(syn, ns, arp, reply))
    assert [(f.src, f.dst, f.proto, f.sport, f.dport, f.mss) for f in frames[:1]] == [
        ("10.137.0.10", "198.51.100.1", 6, 40000, 1194, 1360)
    ]
    assert frames[0].tcp_flags == 0x02
    assert (frames[1].dst, frames[1].proto, frames[1].icmp_type) == ("ff02::1", 58, 135)
    assert frames[2].ethertype == 0x0806 and frames[2].src == ""
    assert (frames[3].src_mac, frames[3].proto, frames[3].dport) == (
        "fe:ff:ff:ff:ff:ff",
        17,
        40000,
    )
    capture = Capture(Path("unused"), frames)
    assert capture.frames_from_sysvpn() == frames[:2]  # ARP and sys-net's frames left out


def test_parse_pcap_tolerates_an_empty_or_header_only_file() -> None:
    assert parse_pcap(b"") == []
    assert parse_pcap(pcap()) == []
