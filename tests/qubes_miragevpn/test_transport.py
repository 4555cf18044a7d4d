"""The batch-shaped UDP transport against real sockets on 127.0.0.1.

- GSO runs (pure): which datagrams one UDP_SEGMENT sendmsg may carry.
- Sending: every datagram arrives at a plain UDP receiver with its own boundaries and in order,
  with GSO (when this kernel has it) and without.
- Receiving: one wake-up hands over at most RECV_BATCH datagrams; nothing is lost or reordered.
- The send queue: what the socket refuses (EAGAIN) waits, in order, and is sent when it becomes
  writable; beyond the bound new datagrams are dropped and counted.
- ICMP errors (nobody listening) are counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from qubes_miragevpn import transport
from qubes_miragevpn.transport import (
    GSO_MAX_BYTES,
    RECV_BATCH,
    SO_MARK,
    UDP_MAX_SEGMENTS,
    UdpTransport,
    gso_available,
    gso_runs,
    open_tcp,
    open_udp,
)
from tests.helpers.netns import Netns

LOOPBACK = ipaddress.ip_address("127.0.0.1")
TIMEOUT = 5.0


def runs(sizes: Sequence[int]) -> list[int]:
    """The batch lengths `gso_runs` cuts `sizes` into."""
    datagrams = [b"x" * n for n in sizes]
    out, i = [], 0
    while i < len(datagrams):
        end = gso_runs(datagrams, i)
        assert end > i
        out.append(end - i)
        i = end
    return out


def test_gso_runs_equal_sizes_and_a_shorter_last() -> None:
    assert runs([100] * 5) == [5]
    assert runs([100, 100, 60, 100]) == [3, 1]  # the shorter one ends the run
    assert runs([100, 200, 200]) == [1, 2]  # a bigger one cannot join
    assert runs([100, 100, 100, 200]) == [3, 1]
    assert runs([50]) == [1]
    assert runs([]) == []


def test_gso_runs_respect_the_segment_and_byte_limits() -> None:
    assert runs([10] * (UDP_MAX_SEGMENTS * 2 + 3)) == [UDP_MAX_SEGMENTS, UDP_MAX_SEGMENTS, 3]
    per = GSO_MAX_BYTES // 1400
    assert runs([1400] * (per + 5)) == [per, 5]
    big = runs([20000] * 7)
    assert big == [3, 3, 1] and all(n * 20000 <= GSO_MAX_BYTES for n in big)


class Receiver:
    """A plain UDP socket on 127.0.0.1: what arrives, datagram by datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port: int = self.sock.getsockname()[1]

    def receive(self, count: int) -> list[bytes]:
        return [self.sock.recv(65536) for _ in range(count)]

    def close(self) -> None:
        self.sock.close()


def datagrams_of_mixed_sizes() -> list[bytes]:
    """Runs of equal sizes, shorter tails, single odd ones; every datagram distinct."""
    sizes = [1424] * 20 + [700] + [1424] * 3 + [64] * 70 + [1] + [9000] * 9 + [1500, 1200, 1200]
    return [
        bytes([i % 256]) * 2 + i.to_bytes(4, "big") + b"p" * (n - 6) if n >= 6 else b"s"
        for i, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain"])
def test_send_keeps_datagram_boundaries_and_order(gso: bool) -> None:
    receiver = Receiver()
    sent = datagrams_of_mixed_sizes()

    async def main() -> UdpTransport:
        opened = await open_udp(LOOPBACK, receiver.port, lambda batch: None, lambda exc: None)
        if gso and not opened.gso:
            opened.close()
            pytest.skip("this kernel has no UDP GSO")
        opened.gso = gso
        opened.send(sent)
        opened.close()
        return opened

    try:
        udp = asyncio.run(main())
        assert receiver.receive(len(sent)) == sent
    finally:
        receiver.close()
    assert udp.stats.sent == len(sent)
    if gso:
        assert 0 < udp.stats.gso_sends < len(sent)
    else:
        assert udp.stats.gso_sends == 0


def test_gso_detection_is_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_gso_detected", None)
    monkeypatch.setenv(transport.NO_GSO_ENV, "1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert gso_available(sock) is False
        monkeypatch.delenv(transport.NO_GSO_ENV)
        assert gso_available(sock) is False  # remembered


def test_receive_drains_in_bounded_batches() -> None:
    count = RECV_BATCH * 3 + 7
    batches: list[list[bytes]] = []

    async def main() -> None:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        done = asyncio.get_running_loop().create_future()

        def on_data(batch: list[bytes]) -> None:
            batches.append(batch)
            if sum(map(len, batches)) >= count and not done.done():
                done.set_result(None)

        udp = await open_udp(LOOPBACK, peer.getsockname()[1], on_data, lambda exc: None)
        udp._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # everything is queued on the socket before the loop gets to read any of it
        for i in range(count):
            peer.sendto(i.to_bytes(4, "big"), udp._sock.getsockname())
        await asyncio.wait_for(done, TIMEOUT)
        udp.close()
        peer.close()
        assert udp.stats.received == count and udp.stats.receive_batches == len(batches)

    asyncio.run(main())
    assert [len(b) for b in batches] == [RECV_BATCH, RECV_BATCH, RECV_BATCH, 7]
    received = [d for b in batches for d in b]
    assert received == [i.to_bytes(4, "big") for i in range(count)]


class ChokingSocket(socket.socket):
    """A real UDP socket whose sends fail with EAGAIN while `choked` (as a full socket does)."""

    choked = True
    attempts = 0

    def send(self, data: Any, flags: int = 0) -> int:
        self.attempts += 1
        if self.choked:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().send(data, flags)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        self.attempts += 1
        if self.choked:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().sendmsg(buffers, ancdata, flags)


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain"])
def test_send_queue_waits_in_order_and_is_bounded(gso: bool) -> None:
    receiver = Receiver()
    limit = 100

    async def main() -> UdpTransport:
        loop = asyncio.get_running_loop()
        sock = ChokingSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", receiver.port))
        udp = UdpTransport(
            sock, lambda batch: None, lambda exc: None, loop=loop, gso=gso, send_queue=limit
        )
        first = [b"a%03d" % i for i in range(60)]
        second = [b"b%03d" % i for i in range(60)]
        udp.send(first)
        assert udp.stats.queued == 60 and udp.stats.sent == 0
        udp.send(second)  # behind the first, and over the bound: 20 dropped
        assert udp.stats.queued == limit and udp.stats.queue_dropped == 20
        attempts = sock.attempts
        udp.send([b"late"])  # the queue is full: dropped at once, no send attempted
        assert sock.attempts == attempts and udp.stats.queue_dropped == 21
        await asyncio.sleep(0.05)  # writable, but still choked: nothing leaves, nothing lost
        assert udp.stats.sent == 0 and len(udp._queue) == limit
        sock.choked = False
        for _ in range(100):
            if not udp._queue:
                break
            await asyncio.sleep(0.01)
        assert not udp._queue and not udp._writing
        udp.send([b"after"])  # the queue is empty again: straight out
        udp.close()
        return udp

    try:
        udp = asyncio.run(main())
        got = receiver.receive(limit + 1)
    finally:
        receiver.close()
    expected = [b"a%03d" % i for i in range(60)] + [b"b%03d" % i for i in range(40)] + [b"after"]
    assert got == expected
    assert udp.stats.sent == limit + 1


def test_icmp_errors_are_counted_not_raised() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens here

    async def main() -> UdpTransport:
        lost: list[Exception | None] = []
        udp = await open_udp(LOOPBACK, port, lambda batch: None, lost.append)
        for _ in range(50):
            udp.send([b"anyone?"])
            await asyncio.sleep(0.01)
            if udp.stats.send_errors and udp.stats.receive_errors:
                break
        udp.close()
        assert lost == []
        return udp

    udp = asyncio.run(main())
    assert udp.stats.send_errors + udp.stats.receive_errors > 0
    assert udp.closed


def test_tcp_batches_are_written_joined_and_chunks_read_as_batches() -> None:
    async def main() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        batches: list[list[bytes]] = []
        lost: list[Exception | None] = []
        tcp = await open_tcp(LOOPBACK, port, batches.append, lost.append, timeout=TIMEOUT)
        reader, writer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        sock = tcp._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        tcp.send([b"\x00\x03abc", b"\x00\x02de", b"\x00\x01f"])
        tcp.send([])
        assert (
            await asyncio.wait_for(reader.readexactly(12), TIMEOUT)
            == b"\x00\x03abc\x00\x02de\x00\x01f"
        )
        writer.write(b"x" * 100_000)
        await writer.drain()
        for _ in range(200):
            if sum(len(b[0]) for b in batches) >= 100_000:
                break
            await asyncio.sleep(0.01)
        assert (
            all(len(b) == 1 for b in batches) and b"".join(b[0] for b in batches) == b"x" * 100_000
        )
        writer.close()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        assert lost == [None]  # an orderly close by the server
        tcp.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_socket_mark_is_set_before_connecting() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        udp = await open_udp(LOOPBACK, port, lambda batch: None, lambda exc: None, mark=0x1234)
        tcp = await open_tcp(
            LOOPBACK, port, lambda batch: None, lambda exc: None, timeout=TIMEOUT, mark=0x77
        )
        unmarked = await open_udp(LOOPBACK, port, lambda batch: None, lambda exc: None)
        try:
            assert udp._sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x1234
            tcp_sock = tcp._transport.get_extra_info("socket")
            assert tcp_sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x77
            assert tcp_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert unmarked._sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0
        finally:
            udp.close()
            tcp.close()
            unmarked.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@pytest.mark.netns
def test_a_tcp_connect_that_times_out_closes_its_socket(netns: Netns) -> None:
    # in a namespace whose only route leads into a veth whose peer is down: nobody answers
    for argv in (
        ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["ip", "addr", "add", "192.0.2.2/24", "dev", "v0"],
        ["ip", "link", "set", "v0", "up"],
    ):
        netns.run(argv)

    async def main() -> None:
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(TimeoutError):
            await open_tcp(
                ipaddress.ip_address("192.0.2.1"),
                9,
                lambda batch: None,
                lambda exc: None,
                timeout=0.2,
            )
        assert len(os.listdir("/proc/self/fd")) == before

    netns.call(lambda: asyncio.run(main()))


# --------------------------------------------------------------------------- proxy handshake


def _through_proxy(answer: Callable[[socket.socket], None]) -> bytes | BaseException:
    """proxy_handshake to vpn.example:1194 through a SOCKS5 proxy played by `answer` on the
    other end of a socket pair: the leftover bytes, or the error."""
    from miragevpn.config.model import SocksProxy
    from miragevpn.events import ProxyRoute

    async def main() -> bytes | BaseException:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            via = ProxyRoute(proxy=SocksProxy(host="p"), host="vpn.example", port=1194)
            proxy = loop.run_in_executor(None, answer, theirs)
            try:
                return await asyncio.wait_for(transport.proxy_handshake(loop, ours, via), 5)
            except Exception as e:
                return e
            finally:
                with contextlib.suppress(OSError):
                    theirs.shutdown(socket.SHUT_RDWR)
                await proxy
        finally:
            ours.close()
            theirs.close()

    return asyncio.run(main())


def test_a_socks5_handshake_answered_in_pieces_hands_over_what_follows() -> None:
    def answer(sock: socket.socket) -> None:
        assert sock.recv(16) == b"\x05\x01\x00"  # SOCKS5, one method: no authentication
        sock.sendall(b"\x05\x00")
        assert sock.recv(64).startswith(b"\x05\x01\x00\x03\x0bvpn.example")
        for piece in (b"\x05\x00\x00", b"\x01\x7f\x00", b"\x00\x01\x04\xaaserver"):
            sock.sendall(piece)

    assert _through_proxy(answer) == b"server"


def test_a_proxy_that_closes_or_never_finishes_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from miragevpn.errors import ProxyProtocolError, ProxyRefused

    def closes(sock: socket.socket) -> None:
        sock.recv(16)
        sock.shutdown(socket.SHUT_WR)

    error = _through_proxy(closes)
    assert isinstance(error, ProxyRefused) and "closed the connection" in str(error)

    # reads: the method answer, then the reply's head and at least one more piece of a reply
    # that never ends (its name is 255 bytes long; fewer come, 10 ms apart)
    monkeypatch.setattr(transport, "PROXY_MAX_READS", 3)

    def trickles(sock: socket.socket) -> None:
        sock.recv(16)
        sock.sendall(b"\x05\x00")
        sock.recv(64)
        sock.sendall(b"\x05\x00\x00\x03\xff")
        for _ in range(200):
            time.sleep(0.01)
            try:
                sock.sendall(b"x")
            except OSError:
                return

    error = _through_proxy(trickles)
    assert isinstance(error, ProxyProtocolError) and "did not end" in str(error), error
