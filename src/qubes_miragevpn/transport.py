"""Sockets to the VPN server, batch-shaped (wireguard-go's `conn/` in spirit).

Both transports hand incoming bytes to `on_data` as a batch (a list) and take outgoing bytes as
a batch (`send(items)`), so the session loop calls into the engine, the tun device and its timer
once per batch instead of once per datagram:

- UDP (`UdpTransport`): a connected non-blocking datagram socket we own (`loop.add_reader`; no
  asyncio transport in between). One wake-up drains up to RECV_BATCH datagrams and hands them
  over together. (Plain `recv`: the engine wants `bytes`, and `recv_into` a reused buffer plus
  the copy out of it measured ~15% slower per datagram than letting `recv` allocate.)
  `send(datagrams)` sends right away; runs of equal-size datagrams (the last of a run may be
  shorter) go out as one `sendmsg` with a UDP_SEGMENT control message (UDP GSO, Linux >= 4.18)
  when the kernel has it, detected once per process and logged, otherwise one `send` each.
  What the socket cannot take now (EAGAIN, ENOBUFS) waits in a bounded queue flushed by
  `loop.add_writer`; a full queue drops the newest datagrams and counts them (`stats`) rather
  than growing.
- TCP (`TcpTransport`): an asyncio stream (reads up to asyncio's chunk size per wake-up; the
  engine deframes) with TCP_NODELAY; a batch is joined and written once.
- Through a proxy (`open_tcp(..., via=ProxyRoute)`): the socket goes to the proxy, the proxy's
  handshake runs on it (HTTP CONNECT: `miragevpn.httpconnect`; SOCKS5: `miragevpn.socks5`;
  both sans-IO, driven here with sock_sendall/sock_recv), then OpenVPN's TCP framing flows as
  without a proxy. The handshake is bounded by the same timeout as the connect; what the proxy
  sent after its answer is handed to `on_data` first. A refusal raises `ProxyError` saying
  whose fault it is (refused, 407/authentication, not a proxy of that kind).

Both report the end of the connection to `on_lost` (with the error, or None for an orderly close
by the server); for UDP only a socket that became unusable is an end (ICMP errors such as
"connection refused" while the server restarts are logged and counted: the engine's timers
cope). Opening is bounded by a timeout.

Both take an optional `mark` (SO_MARK, set before the socket connects; needs CAP_NET_ADMIN) so
that a gateway's firewall and policy routing can tell the tunnel's own sockets from the traffic
it carries.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from miragevpn.config.model import HttpProxy
from miragevpn.errors import ProxyProtocolError, ProxyRefused
from miragevpn.events import ProxyRoute
from miragevpn.httpconnect import HttpConnect
from miragevpn.socks5 import Socks5Connect

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
OnData = Callable[[list[bytes]], None]
OnLost = Callable[[Exception | None], None]

PROXY_READ = 4096  # bytes read per proxy-handshake step
PROXY_MAX_READS = 64  # bounded: a handshake is a few small answers
RECV_BATCH = 64  # datagrams read per wake-up: the tun side and the timers are never starved
RECV_BUFFER = 65536  # > the largest UDP payload (65507): a datagram is never truncated
SEND_QUEUE = 1024  # datagrams waiting for a writable socket; beyond that new ones are dropped

# <linux/udp.h>: UDP GSO. One sendmsg carries up to UDP_MAX_SEGMENTS datagrams of `gso_size`
# bytes each (the last may be shorter), all within one maximal UDP payload.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header); also safe for IPv6
_GSO_SIZE = struct.Struct("=H")  # the cmsg payload: a u16 in host order
SO_MARK = getattr(socket, "SO_MARK", 36)  # <asm-generic/socket.h>; Python has it since 3.12
NO_GSO_ENV = "QUBES_MIRAGEVPN_NO_GSO"  # set to 1 to force one send per datagram (diagnostics)

# Errors after which the same send can succeed later: wait for the socket to be writable.
_RETRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
# Errors the kernel reports when it cannot segment this batch (e.g. a datagram bigger than the
# path MTU, or a device without checksum offload): send it one datagram at a time instead.
_GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.EOPNOTSUPP})


class Transport(Protocol):
    """A connection to the server, as the session loop uses it."""

    def send(self, items: Sequence[bytes]) -> None:
        """Send datagrams (UDP) or stream bytes (TCP, joined), in order."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- UDP GSO


def gso_runs(datagrams: Sequence[bytes], start: int = 0) -> int:
    """The end (exclusive) of the GSO batch starting at `start`: datagrams of the first one's
    size, the last possibly shorter, at most UDP_MAX_SEGMENTS and GSO_MAX_BYTES in all."""
    n = len(datagrams)
    size = len(datagrams[start])
    end, total = start + 1, size
    limit = min(n, start + UDP_MAX_SEGMENTS)
    while end < limit:
        length = len(datagrams[end])
        if length > size or total + length > GSO_MAX_BYTES:
            break
        total += length
        end += 1
        if length < size:
            break  # a shorter datagram ends the batch
    return end


_gso_detected: bool | None = None


def gso_available(sock: socket.socket) -> bool:
    """Whether this kernel segments UDP (UDP_SEGMENT), asked once per process and logged."""
    global _gso_detected
    if _gso_detected is None:
        if os.environ.get(NO_GSO_ENV, "") not in ("", "0"):
            _gso_detected = False
            log.info("UDP send path: one send per datagram (%s is set)", NO_GSO_ENV)
        else:
            try:
                sock.getsockopt(SOL_UDP, UDP_SEGMENT)
            except OSError as e:
                _gso_detected = False
                log.info("UDP send path: one send per datagram (no UDP GSO here: %s)", e)
            else:
                _gso_detected = True
                log.info(
                    "UDP send path: GSO (UDP_SEGMENT), up to %d equal-size datagrams per sendmsg",
                    UDP_MAX_SEGMENTS,
                )
    return _gso_detected


# --------------------------------------------------------------------------- UDP


@dataclass
class UdpStats:
    """Counters of one UDP socket; the application logs them with the engine's statistics."""

    received: int = 0
    receive_batches: int = 0
    receive_errors: int = 0
    sent: int = 0
    gso_sends: int = 0  # sendmsg calls that carried more than one datagram
    send_errors: int = 0  # datagrams the kernel refused for good (e.g. ICMP port unreachable)
    queued: int = 0  # datagrams that had to wait for a writable socket
    queue_dropped: int = 0  # datagrams dropped because that queue was full


class UdpTransport:
    """A connected UDP socket driven by `loop.add_reader`/`add_writer` (see the module doc)."""

    def __init__(
        self,
        sock: socket.socket,
        on_data: OnData,
        on_lost: OnLost,
        *,
        loop: asyncio.AbstractEventLoop,
        gso: bool,
        recv_batch: int = RECV_BATCH,
        send_queue: int = SEND_QUEUE,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._on_data = on_data
        self._on_lost = on_lost
        self._loop = loop
        self.gso = gso
        self._recv_batch = recv_batch
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_limit = send_queue
        self._writing = False
        self.stats = UdpStats()
        self.closed = False
        loop.add_reader(self._fd, self._on_readable)

    # ---- receive

    def _on_readable(self) -> None:
        recv = self._sock.recv
        batch: list[bytes] = []
        for _ in range(self._recv_batch):
            try:
                batch.append(recv(RECV_BUFFER))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.EBADF, errno.ENOTSOCK):
                    self._lost(e)
                    return
                # An ICMP error queued on the socket (port unreachable while the server
                # restarts, ...): the call consumed it; the engine's timers cope.
                self.stats.receive_errors += 1
                log.debug("UDP error from the server side: %s", e)
                continue
        if batch:
            self.stats.received += len(batch)
            self.stats.receive_batches += 1
            self._on_data(batch)

    # ---- send

    def send(self, items: Sequence[bytes]) -> None:
        if self.closed or not items:
            return
        if self._queue:  # keep the order: behind what is already waiting
            self._enqueue(items, 0)
            return
        sent = self._send_now(items)
        if sent < len(items):
            self._enqueue(items, sent)

    def _send_now(self, datagrams: Sequence[bytes]) -> int:
        """Send as many as the socket takes now; the number sent (or dropped for good)."""
        sock, n, i = self._sock, len(datagrams), 0
        while i < n:
            if self.gso and i + 1 < n:
                end = gso_runs(datagrams, i)
                if end - i > 1:
                    cmsg = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(datagrams[i])))]
                    try:
                        sock.sendmsg(datagrams[i:end], cmsg)
                    except OSError as e:
                        if e.errno in _RETRY_LATER:
                            return i
                        if e.errno in _GSO_REFUSED:
                            log.warning(
                                "UDP GSO refused by the kernel (%s): one send per datagram "
                                "from now on",
                                e,
                            )
                            self.gso = False
                            continue  # the same datagrams again, one at a time
                        self._send_error(e, end - i)
                    else:
                        self.stats.sent += end - i
                        self.stats.gso_sends += 1
                    i = end
                    continue
            try:
                sock.send(datagrams[i])
            except OSError as e:
                if e.errno in _RETRY_LATER:
                    return i
                self._send_error(e, 1)
            else:
                self.stats.sent += 1
            i += 1
        return n

    def _send_error(self, error: OSError, count: int) -> None:
        # e.g. ECONNREFUSED: an ICMP port unreachable from an earlier datagram, reported (and
        # consumed) by this call. Dropped as asyncio's transport did; the engine retransmits.
        self.stats.send_errors += count
        log.debug("UDP send failed, %d datagram(s) dropped: %s", count, error)

    def _enqueue(self, items: Sequence[bytes], start: int) -> None:
        room = self._queue_limit - len(self._queue)
        waiting = items[start : start + max(room, 0)]
        self._queue.extend(waiting)
        self.stats.queued += len(waiting)
        dropped = len(items) - start - len(waiting)
        if dropped:
            self.stats.queue_dropped += dropped
            log.debug("UDP send queue full: dropped %d datagram(s)", dropped)
        if not self._writing and self._queue:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        queue = self._queue
        for _ in range(self._queue_limit // UDP_MAX_SEGMENTS + 1):  # bounded: drains the queue
            if not queue:
                break
            chunk = [queue[k] for k in range(min(len(queue), UDP_MAX_SEGMENTS))]
            sent = self._send_now(chunk)
            for _ in range(sent):
                queue.popleft()
            if sent < len(chunk):
                return  # still full: wait for the next writable
        if not queue:
            self._writing = False
            self._loop.remove_writer(self._fd)

    # ---- end

    def _lost(self, error: Exception) -> None:
        self.close()
        self._on_lost(error)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._queue.clear()
        self._sock.close()


def _new_socket(address: IPAddress, kind: int, mark: int | None) -> socket.socket:
    """A non-blocking socket for `address`, carrying SO_MARK `mark` if given."""
    sock = socket.socket(_family(address), kind)
    try:
        sock.setblocking(False)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp(
    address: IPAddress, port: int, on_data: OnData, on_lost: OnLost, *, mark: int | None = None
) -> UdpTransport:
    loop = asyncio.get_running_loop()
    sock = _new_socket(address, socket.SOCK_DGRAM, mark)
    try:
        sock.connect((str(address), port))  # a UDP connect does not wait for anything
        gso = gso_available(sock)
        return UdpTransport(sock, on_data, on_lost, loop=loop, gso=gso)
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------------------- TCP


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, on_data: OnData, on_lost: OnLost) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data([data])

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class TcpTransport:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def send(self, items: Sequence[bytes]) -> None:
        if items and not self._transport.is_closing():
            self._transport.write(items[0] if len(items) == 1 else b"".join(items))

    def close(self) -> None:
        self._transport.close()


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


async def proxy_handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, via: ProxyRoute
) -> bytes:
    """Open the way to `via.host:via.port` through the proxy `sock` is connected to; the
    bytes the proxy sent after its answer (the server's, normally none)."""
    proxy = via.proxy
    if isinstance(proxy, HttpProxy):
        http = HttpConnect(proxy, via.host, via.port)
        await loop.sock_sendall(sock, http.request())
        for _ in range(PROXY_MAX_READS):
            if http.receive(await _proxy_read(loop, sock)):
                return http.leftover
    else:
        socks = Socks5Connect(proxy, via.host, via.port)
        await loop.sock_sendall(sock, socks.start())
        for _ in range(PROXY_MAX_READS):
            reply = socks.receive(await _proxy_read(loop, sock))
            if reply:
                await loop.sock_sendall(sock, reply)
            if socks.done:
                return socks.leftover
    raise ProxyProtocolError(f"the proxy's answer did not end after {PROXY_MAX_READS} reads")


async def _proxy_read(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = await loop.sock_recv(sock, PROXY_READ)
    if not data:
        raise ProxyRefused("the proxy closed the connection during its handshake")
    return data


async def open_tcp(
    address: IPAddress,
    port: int,
    on_data: OnData,
    on_lost: OnLost,
    *,
    timeout: float,
    mark: int | None = None,
    via: ProxyRoute | None = None,
) -> TcpTransport:
    """A TCP connection to `address:port`; with `via`, that is the proxy, and the proxy's
    handshake to the server runs before this returns (both within `timeout`)."""
    loop = asyncio.get_running_loop()
    sock = _new_socket(address, socket.SOCK_STREAM, mark)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = loop.time() + timeout
        await asyncio.wait_for(loop.sock_connect(sock, (str(address), port)), timeout)
        leftover = b""
        if via is not None:
            remaining = max(deadline - loop.time(), 0.001)
            leftover = await asyncio.wait_for(proxy_handshake(loop, sock, via), remaining)
        protocol = _TcpProtocol(on_data, on_lost)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    if leftover:
        # after the caller has taken the transport (it does so without awaiting), before
        # anything the socket reads next: call_soon callbacks run in order
        loop.call_soon(protocol.data_received, leftover)
    return TcpTransport(transport)
