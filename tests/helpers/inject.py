"""Hostile wire: capture a session's UDP datagrams and inject forged ones, inside test namespaces.

    capture = UdpCapture.start(pair.client, pair.link.b_if)   # AF_PACKET on the client's veth
    ...                                                       # the session runs
    seen = capture.stop()                                     # every UDP datagram, both ways
    injector = Injector.open(pair.server)                     # raw IPv4 socket in the server ns
    injector.send_burst(src=(server_ip, 1194), dst=(client_ip, port), payloads=[...])

The client's UDP socket is connected, so a forged datagram must come from exactly the server's
address and port: the injector writes the IPv4 and UDP headers itself (`IPPROTO_RAW`) and sends
from the server's namespace over the test veth; nothing leaves the test's namespaces.

Also the mutations a hostile-wire test applies to real packets (`truncations`, `flip_one_byte`,
`with_first_byte`, `garbage`), and `udp_kernel_drops(ns)` (the kernel's UDP receive errors in a
namespace, from /proc/net/snmp) so a test can tell the engine's drops from the kernel's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.helpers.ippacket import internet_checksum
from tests.helpers.netns import Netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_HEADER = 14
UDP_HEADER = struct.Struct("!HHHH")
MAX_CAPTURED = 20_000  # datagrams kept by one capture (bounded memory)
MAX_UDP_PAYLOAD = 1472  # 1500-byte veth MTU - IPv4 - UDP headers
Address = tuple[str, int]


@dataclass(frozen=True)
class Datagram:
    src: Address
    dst: Address
    payload: bytes


@dataclass
class UdpCapture:
    """Every IPv4 UDP datagram seen on one interface (both directions), read by a thread."""

    sock: socket.socket
    datagrams: list[Datagram] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def start(cls, ns: Netns, ifname: str) -> UdpCapture:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((ifname, ETH_P_ALL))
            return sock

        sock = ns.call(open_socket)
        sock.settimeout(0.1)  # the reader looks at its stop flag this often
        capture = cls(sock)
        capture._thread = threading.Thread(target=capture._read, name="udp-capture", daemon=True)
        capture._thread.start()
        return capture

    def _read(self) -> None:
        while not self._stop.is_set() and len(self.datagrams) < MAX_CAPTURED:
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            datagram = decode_udp_frame(frame)
            if datagram is not None:
                self.datagrams.append(datagram)

    def stop(self) -> list[Datagram]:
        """Stop reading (bounded wait), close the socket; return what was captured."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.sock.close()
        return list(self.datagrams)

    def __enter__(self) -> UdpCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def decode_udp_frame(frame: bytes) -> Datagram | None:
    """The UDP datagram in an Ethernet frame, or None (not IPv4/UDP, a fragment, truncated)."""
    if len(frame) < ETH_HEADER + 20 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    fragment = int.from_bytes(ip[6:8], "big") & 0x3FFF  # MF flag or an offset
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP or fragment or len(ip) < ihl + 8:
        return None
    sport, dport, length, _ = UDP_HEADER.unpack_from(ip, ihl)
    if length < 8 or ihl + length > min(total, len(ip)):
        return None
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    return Datagram((src, sport), (dst, dport), bytes(ip[ihl + 8 : ihl + length]))


def encode_ipv4_udp(src: Address, dst: Address, payload: bytes, *, ident: int = 0) -> bytes:
    """An IPv4 + UDP packet with a correct UDP checksum (the kernel fills the IP checksum)."""
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"{len(payload)}-byte payload does not fit one unfragmented datagram")
    src_ip, dst_ip = (ipaddress.IPv4Address(a[0]).packed for a in (src, dst))
    length = UDP_HEADER.size + len(payload)
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    checksum = (
        internet_checksum(pseudo + UDP_HEADER.pack(src[1], dst[1], length, 0) + payload) or 0xFFFF
    )
    udp = UDP_HEADER.pack(src[1], dst[1], length, checksum) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000, 64, socket.IPPROTO_UDP, 0,
        src_ip, dst_ip,
    )  # fmt: skip
    return ip + udp


@dataclass
class Injector:
    """A raw IPv4 socket inside one namespace: sends UDP datagrams with any source."""

    sock: socket.socket
    sent: int = 0

    @classmethod
    def open(cls, ns: Netns) -> Injector:
        sock = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))
        return cls(sock)

    def send(self, src: Address, dst: Address, payload: bytes) -> None:
        self.sent += 1
        packet = encode_ipv4_udp(src, dst, payload, ident=self.sent & 0xFFFF)
        self.sock.sendto(packet, (dst[0], 0))

    def send_burst(
        self, src: Address, dst: Address, payloads: Sequence[bytes], *, pace: float = 0.002
    ) -> int:
        """Send every payload, `pace` seconds apart (bounded by len(payloads)); return the count."""
        for payload in payloads:
            self.send(src, dst, payload)
            if pace:
                time.sleep(pace)
        return len(payloads)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- mutations


def garbage(rng: random.Random, count: int, *, max_length: int = 1400) -> list[bytes]:
    """`count` datagrams of random bytes and random lengths (1..max_length)."""
    return [rng.randbytes(rng.randint(1, max_length)) for _ in range(count)]


def truncations(packet: bytes) -> list[bytes]:
    """Every proper prefix of `packet`: lengths 0 .. len(packet) - 1."""
    return [packet[:n] for n in range(len(packet))]


def flip_one_byte(packet: bytes, rng: random.Random, *, first: int = 1) -> bytes:
    """`packet` with one byte at a random position >= `first` XORed with a non-zero value."""
    position = rng.randrange(first, len(packet))
    flipped = bytearray(packet)
    flipped[position] ^= rng.randint(1, 255)
    return bytes(flipped)


def with_first_byte(packet: bytes, opcode: int, key_id: int) -> bytes:
    """`packet` with its opcode/key-id byte replaced (opcode << 3 | key id)."""
    return bytes(((opcode << 3) | key_id,)) + packet[1:]


def cycle(packets: Sequence[bytes], count: int) -> list[bytes]:
    """`count` packets taken in turn from `packets`."""
    if not packets:
        raise ValueError("nothing to repeat")
    return [packets[i % len(packets)] for i in range(count)]


# ---------------------------------------------------------------------- kernel counters


def udp_kernel_drops(ns: Netns) -> int:
    """UDP datagrams the kernel of `ns` dropped before any socket read them (buffer, checksum)."""
    return _snmp(ns, "Udp").get("InErrors", 0)  # RcvbufErrors and InCsumErrors count here too


def _snmp(ns: Netns, table: str) -> dict[str, int]:
    lines = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    rows = [line[1:] for line in lines if line and line[0] == f"{table}:"]
    with contextlib.suppress(ValueError, IndexError):
        return dict(zip(rows[0], map(int, rows[1]), strict=True))
    return {}


def opcodes(datagrams: Iterable[Datagram]) -> list[int]:
    return [d.payload[0] >> 3 for d in datagrams if d.payload]
