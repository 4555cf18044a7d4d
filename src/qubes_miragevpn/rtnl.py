"""Route netlink on the running event loop: one socket, one request at a time, no threads.

`open_rtnl()` opens an AF_NETLINK/NETLINK_ROUTE socket in the calling thread's network
namespace (a socket stays in the namespace it was made in) and returns a `KernelRtnl`; its
requests are built and read by `nlmsg` (the bytes `ip` sends for the same change) and go through
`loop.sock_sendall`/`sock_recv` on the non-blocking socket:

    request     one in flight (a lock); each with a fresh sequence number, NLM_F_ACK
    reply       datagrams of at most RECV_SIZE bytes, at most MAX_DATAGRAMS per request, until
                the kernel's acknowledgement or refusal; answers to an earlier request that was
                given up on (cancelled, timed out) are recognised by their sequence number and
                dropped
    timeout     REQUEST_TIMEOUT seconds per request: a kernel that stays silent raises
                TimeoutError instead of hanging the tunnel's set-up

Errors: the kernel's refusal is `nlmsg.NetlinkError` (an OSError, `.code` = errno); a timeout is
TimeoutError; a reply we cannot read is OSError(EBADMSG); a value that cannot be encoded (an
address of the wrong family, an unknown command) is ValueError, the caller's. Use one instance
from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from . import nlmsg
from .nlmsg import NetlinkError

log = logging.getLogger(__name__)

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REQUEST_TIMEOUT = 20.0  # seconds; the RTNL lock can be held for seconds (namespaces going away)
RECV_SIZE = 65536  # above the kernel's largest netlink datagram for our requests
MAX_DATAGRAMS = 64  # per request: ours are answered in one or two


class Rtnl(Protocol):
    """The route-netlink requests the tunnel needs, as plain values."""

    async def link_index(self, ifname: str) -> int | None:
        """The index of the link `ifname`, or None if there is none."""
        ...

    async def link_info(self, index: int) -> tuple[str, int] | None:
        """(name, MTU) of the link `index`, or None if there is none."""
        ...

    async def link_set(self, index: int, *, mtu: int | None = None, up: bool = False) -> None: ...

    async def addr(
        self,
        command: str,
        *,
        index: int,
        family: int,
        address: str,
        prefixlen: int,
        local: str | None = None,
        flags: int = 0,
    ) -> None:
        """`ip addr add|del` (see `nlmsg.address_change`)."""
        ...

    async def route(
        self,
        command: str,
        *,
        dst: str,
        family: int,
        oif: int | None = None,
        gateway: str | None = None,
        scope: int = nlmsg.RT_SCOPE_UNIVERSE,
        priority: int | None = None,
        flags: int = 0,
        route_type: int | None = None,
    ) -> None:
        """`ip route add|replace|del` (see `nlmsg.route_change`)."""
        ...

    async def route_get(self, dst: IPAddress, family: int) -> RoutePath:
        """The kernel's route to `dst` (`ip route get`)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RoutePath:
    """Where the kernel sends packets for one address."""

    gateway: IPAddress | None  # None: on-link (a connected subnet, or a point-to-point device)
    oif: int  # output interface index
    local: bool  # the address is one of this system's own (route type "local")


def netlink_socket(protocol: int) -> socket.socket:
    """A non-blocking netlink socket of `protocol`, in the calling thread's namespace, that
    only the kernel can send to, with the kernel's error messages switched on where it has
    them (Linux >= 4.12)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.setblocking(False)
        for option in (nlmsg.NETLINK_CAP_ACK, nlmsg.NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):  # an older kernel: errors without words
                sock.setsockopt(nlmsg.SOL_NETLINK, option, 1)
        sock.bind((0, 0))  # the kernel picks our port id
        sock.connect((0, 0))  # a connected netlink socket takes unicasts from the kernel only
    except BaseException:
        sock.close()
        raise
    return sock


class KernelRtnl:
    """`Rtnl` on one route-netlink socket, used on the running event loop."""

    def __init__(self, sock: socket.socket, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self._sock: socket.socket | None = sock
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._seq = 0

    async def _ask(self, request: nlmsg.Request) -> list[nlmsg.Message]:
        """Send `request`, return the kernel's answers (none for a plain acknowledgement)."""
        async with self._lock:
            sock = self._sock
            if sock is None:
                raise OSError(errno.EBADF, f"{request.words}: the netlink socket is closed")
            loop = asyncio.get_running_loop()
            self._seq = self._seq % 0xFFFFFFFF + 1
            reply = nlmsg.Reply(self._seq, request.words)
            try:
                async with asyncio.timeout(self._timeout):
                    await loop.sock_sendall(sock, nlmsg.encode_request(request, reply.seq))
                    for _ in range(MAX_DATAGRAMS):
                        if reply.receive(await loop.sock_recv(sock, RECV_SIZE)):
                            return reply.answers
            except TimeoutError:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"the kernel did not answer {request.words} within {self._timeout:g} s",
                ) from None
            except nlmsg.MalformedReply as e:
                raise _malformed(request, e) from e
        raise OSError(
            errno.EBADMSG,
            f"the kernel's answer to {request.words} went on past {MAX_DATAGRAMS} datagrams",
        )

    async def _ask_one(self, request: nlmsg.Request, decode: Callable[[nlmsg.Message], T]) -> T:
        answers = await self._ask(request)
        try:
            if len(answers) != 1:
                raise nlmsg.MalformedReply(f"{len(answers)} answers instead of one")
            return decode(answers[0])
        except nlmsg.MalformedReply as e:
            raise _malformed(request, e) from e

    async def link_index(self, ifname: str) -> int | None:
        try:
            return (await self._ask_one(nlmsg.link_by_name(ifname), nlmsg.decode_link)).index
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise

    async def link_info(self, index: int) -> tuple[str, int] | None:
        try:
            link = await self._ask_one(nlmsg.link_by_index(index), nlmsg.decode_link)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return link.name, link.mtu

    async def link_set(self, index: int, *, mtu: int | None = None, up: bool = False) -> None:
        await self._ask(nlmsg.set_link(index, mtu=mtu, up=up))

    async def addr(
        self,
        command: str,
        *,
        index: int,
        family: int,
        address: str,
        prefixlen: int,
        local: str | None = None,
        flags: int = 0,
    ) -> None:
        request = nlmsg.address_change(
            command,
            index=index,
            family=family,
            address=address,
            prefixlen=prefixlen,
            local=local,
            flags=flags,
        )
        await self._ask(request)

    async def route(
        self,
        command: str,
        *,
        dst: str,
        family: int,
        oif: int | None = None,
        gateway: str | None = None,
        scope: int = nlmsg.RT_SCOPE_UNIVERSE,
        priority: int | None = None,
        flags: int = 0,
        route_type: int | None = None,
    ) -> None:
        request = nlmsg.route_change(
            command,
            dst=dst,
            family=family,
            oif=oif,
            gateway=gateway,
            scope=scope,
            priority=priority,
            flags=flags,
            route_type=route_type,
        )
        await self._ask(request)

    async def route_get(self, dst: IPAddress, family: int) -> RoutePath:
        if family != (socket.AF_INET if dst.version == 4 else socket.AF_INET6):
            raise ValueError(f"{dst} is not of address family {family}")
        request = nlmsg.route_lookup(dst)
        found = await self._ask_one(request, nlmsg.decode_route)
        if found.oif is None:
            raise _malformed(request, nlmsg.MalformedReply("a route without an interface"))
        return RoutePath(
            gateway=found.gateway, oif=found.oif, local=found.route_type == nlmsg.RTN_LOCAL
        )

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _malformed(request: nlmsg.Request, error: nlmsg.MalformedReply) -> OSError:
    return OSError(errno.EBADMSG, f"the kernel's answer to {request.words} is malformed: {error}")


async def open_rtnl() -> KernelRtnl:
    """A route-netlink adapter in the calling thread's network namespace."""
    rtnl = KernelRtnl(netlink_socket(nlmsg.NETLINK_ROUTE))
    log.debug("netlink: route netlink socket open")
    return rtnl
