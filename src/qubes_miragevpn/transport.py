"""asyncio glue between a socket to the VPN server and the engine.

- UDP: a connected datagram socket; each datagram goes to the engine as it is.
- TCP: a stream; raw stream bytes go to the engine, which deframes (and frames what it sends).

Both report incoming bytes to `on_data` and the end of the connection to `on_lost` (with the
error, or None for an orderly close by the server). Opening is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
OnData = Callable[[bytes], None]
OnLost = Callable[[Exception | None], None]


class Transport(Protocol):
    """A connection to the server, as the service uses it."""

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_data: OnData, on_lost: OnLost) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._on_data(data)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable while the server restarts: the engine's timers cope.
        log.debug("UDP error from the server side: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._on_lost(exc)


class UdpTransport:
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport

    def send(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.sendto(data)

    def close(self) -> None:
        self._transport.close()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, on_data: OnData, on_lost: OnLost) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class TcpTransport:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def send(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._transport.close()


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


async def open_udp(address: IPAddress, port: int, on_data: OnData, on_lost: OnLost) -> UdpTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpProtocol(on_data, on_lost),
        remote_addr=(str(address), port),
        family=_family(address),
    )
    return UdpTransport(transport)


async def open_tcp(
    address: IPAddress, port: int, on_data: OnData, on_lost: OnLost, *, timeout: float
) -> TcpTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(
            lambda: _TcpProtocol(on_data, on_lost),
            host=str(address),
            port=port,
            family=_family(address),
        ),
        timeout,
    )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpTransport(transport)
