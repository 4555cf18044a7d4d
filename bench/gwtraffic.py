"""What `bench/gateway.py` watches while it breaks things: a steady AppVM packet stream, and
sys-vpn's uplink seen from sys-net.

- `Stream`: appvm1 sends small UDP datagrams to a host behind the VPN at a fixed rate; the
  receiver in sys-net records when each arrived and from which source address. A datagram
  from the tunnel's address range went through the tunnel (the VPN server routed it out of
  its tun); from any other address it left sys-vpn outside the tunnel. Each datagram carries
  its sequence number: an event's recovery time is the arrival of the first datagram SENT
  after the event (one still in flight when the gateway was killed proves nothing), with the
  resolution of one send interval.
- `UplinkCapture`: tcpdump on sys-net's end of the uplink (as `QubesTopology.capture`), read
  back with each frame's timestamp, so leaks can be drawn on the timeline.

Both run in threads of this process on sockets created inside the namespaces; every loop is
bounded by a stop event and timeouts. Times are `time.monotonic()`; pcap timestamps (wall
clock) are converted with the offset measured when the capture starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.netns import Netns, stop_process, wait_until
from tests.helpers.pcap import Frame, parse_pcap

STREAM_PORT = 9100
PAYLOAD = 64  # bytes of UDP payload, as the small-packet iperf3 runs


@dataclass
class Stream:
    """appvm1 -> `address`:STREAM_PORT at `rate` datagrams/s; arrivals recorded in sys-net."""

    sender_ns: Netns
    receiver_ns: Netns
    address: str
    tunnel: ipaddress.IPv4Network
    rate: float = 200.0
    sent: dict[int, float] = field(default_factory=dict)  # sequence number: sent no earlier
    arrivals: list[tuple[float, bool, int]] = field(default_factory=list)  # time, tunnel, seq
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Stream:
        def receiver_socket() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.address, STREAM_PORT))
            return sock

        self._rx = self.receiver_ns.call(receiver_socket)
        self._tx = self.sender_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self._tx.setblocking(False)
        for target, name in ((self._send_loop, "stream-tx"), (self._receive_loop, "stream-rx")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _send_loop(self) -> None:
        interval = 1.0 / self.rate
        padding = bytes(PAYLOAD - 8)
        seq = 0
        next_send = time.monotonic()
        while not self._stop.is_set():
            seq += 1
            before = time.monotonic()
            with contextlib.suppress(OSError):  # no route / refused while blocked: not sent
                self._tx.sendto(struct.pack("!Q", seq) + padding, (self.address, STREAM_PORT))
                self.sent[seq] = before
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_send = time.monotonic()  # fell behind (load): do not burst to catch up

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._rx], [], [], 0.1)
            if not ready:
                continue
            with contextlib.suppress(OSError):
                data, (source, _) = self._rx.recvfrom(2048)
                now = time.monotonic()
                if len(data) < 8:
                    continue
                (seq,) = struct.unpack_from("!Q", data)
                self.arrivals.append((now, ipaddress.IPv4Address(source) in self.tunnel, seq))

    def first_through_tunnel(self, after: float) -> float | None:
        """Seconds from `after` to the arrival of the first datagram through the tunnel that
        was sent at `after` or later."""
        for when, tunnelled, seq in list(self.arrivals):
            if tunnelled and self.sent.get(seq, -1.0) >= after:
                return when - after
        return None

    def wait_through_tunnel(self, after: float, timeout: float) -> float | None:
        """Wait (bounded) for a datagram through the tunnel after `after`; its delay or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first_through_tunnel(after)
            if found is not None:
                return found
            time.sleep(0.01)
        return None

    def outside_tunnel(self) -> int:
        """Datagrams that reached the receiver from a non-tunnel address (must be none)."""
        return sum(1 for _, tunnelled, _ in self.arrivals if not tunnelled)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)
        for sock in (getattr(self, "_rx", None), getattr(self, "_tx", None)):
            if sock is not None:
                sock.close()


@dataclass(frozen=True)
class Stamped:
    when: float  # monotonic seconds
    frame: Frame


def stamped_frames(data: bytes, wall_to_monotonic: float) -> list[Stamped]:
    """The frames of a classic pcap file with their capture times (pcap record headers:
    seconds, microseconds, captured length, original length), as monotonic seconds."""
    frames = parse_pcap(data)
    times: list[float] = []
    if len(data) >= 24:
        endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        offset = 24
        while offset + 16 <= len(data):
            seconds, fraction, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
            times.append(seconds + fraction / (1e9 if nano else 1e6) + wall_to_monotonic)
            offset += 16 + caplen
    return [Stamped(t, f) for t, f in zip(times, frames, strict=True)]


class UplinkCapture:
    """tcpdump -w on `interface` in `ns` (sys-net's end of the uplink) while it runs."""

    def __init__(self, ns: Netns, interface: str, sentinel_to: str) -> None:
        self.ns, self.interface, self.sentinel_to = ns, interface, sentinel_to
        fd, name = tempfile.mkstemp(prefix="mvpn-gwbench-", suffix=".pcap")
        os.close(fd)
        self.path = Path(name)
        self.errors = self.path.with_suffix(".log")
        self.frames: list[Stamped] = []
        self.offset = time.monotonic() - time.time()
        with self.errors.open("w") as err:
            self.proc = ns.spawn(
                ["tcpdump", "-i", interface, "-n", "-p", "-U", "-s", "128", "-w", name],
                stdout=err,
                stderr=err,
            )
        wait_until(
            lambda: "listening on" in self.errors.read_text() or self.proc.poll() is not None,
            10.0,
            what="tcpdump to start",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"tcpdump exited: {self.errors.read_text()}")
        self._sentinel()

    def _sentinel(self) -> None:
        """Datagrams from sys-net to sys-vpn until the file grows: everything sent before is
        in the file (the same proof as `QubesTopology.capture`)."""
        size = self.path.stat().st_size

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"mvpn gwbench sentinel", (self.sentinel_to, 9))

        deadline = time.monotonic() + 10.0
        while self.path.stat().st_size == size:
            if time.monotonic() > deadline:
                raise TimeoutError("the uplink capture never saw its sentinel datagram")
            self.ns.call(send)
            time.sleep(0.05)

    def stop(self) -> list[Stamped]:
        try:
            self._sentinel()
        finally:
            stop_process(self.proc)
            with contextlib.suppress(ValueError):
                self.ns.processes.remove(self.proc)
            self.frames = stamped_frames(self.path.read_bytes(), self.offset)
            self.path.unlink(missing_ok=True)
            self.errors.unlink(missing_ok=True)
        return self.frames
