"""Route netlink (pyroute2) behind one small async interface, on pyroute2 0.7 through 0.9.

pyroute2 0.9's synchronous `IPRoute` runs an asyncio loop of its own, so it cannot be called
from code that already runs in one (pyroute2 issue #1342), and it opens its socket lazily in
whichever thread first uses it. Two backends, chosen by `open_rtnl()`:

- `AsyncRtnl`: pyroute2's `AsyncIPRoute` (0.9 and later), on the caller's event loop.
- `ThreadRtnl`: the synchronous `IPRoute` (0.7, 0.8), created and used only in one dedicated
  worker thread (never shared across threads); each request is awaited on the caller's loop
  through `run_in_executor`. A request that has started always completes, even if its caller
  is cancelled.

Both open their socket in the calling thread's network namespace (the worker thread is started
from the calling thread and inherits its namespace) and both return plain values, so the
adapter above (`netlink.Netlink`) never sees which pyroute2 it runs on. Use one instance from
one event loop. Errors are pyroute2's `NetlinkError` (with `.code`, an errno) or `OSError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pyroute2

log = logging.getLogger(__name__)

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RTN_LOCAL = 2  # <linux/rtnetlink.h>: a route to one of our own addresses
BACKEND_ENV = "QUBES_MIRAGEVPN_NETLINK"  # "thread" or "async": force a backend (tests, diagnosis)


class Rtnl(Protocol):
    """The route-netlink requests the tunnel needs, as plain values."""

    name: str  # "AsyncIPRoute" or "IPRoute in a worker thread", for the log

    async def link_index(self, ifname: str) -> int | None: ...

    async def link_info(self, index: int) -> tuple[str, int] | None:
        """(name, MTU) of the link `index`, or None if there is none."""
        ...

    async def link_set(self, index: int, **changes: Any) -> None: ...

    async def addr(self, command: str, **kwargs: Any) -> None: ...

    async def route(self, command: str, **kwargs: Any) -> None: ...

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


def _route_answer(messages: Any) -> RoutePath:
    msg = next(iter(messages))
    gateway = msg.get_attr("RTA_GATEWAY")
    return RoutePath(
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        oif=int(msg.get_attr("RTA_OIF")),
        local=msg["type"] == RTN_LOCAL,
    )


def _link_answer(messages: Any) -> tuple[str, int] | None:
    for msg in messages:
        return str(msg.get_attr("IFLA_IFNAME")), int(msg.get_attr("IFLA_MTU"))
    return None


# --------------------------------------------------------------------------- thread


class ThreadRtnl:
    """The synchronous `IPRoute`, owned by one worker thread."""

    name = "IPRoute in a worker thread"

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="netlink"
        )
        self._ipr: Any = None

    def _open(self) -> None:
        self._ipr = pyroute2.IPRoute()
        self._ipr.link_lookup(ifname="lo")  # 0.9 opens the socket on first use: here, now

    async def start(self) -> None:
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def link_index(self, ifname: str) -> int | None:
        found = await self._run(lambda: self._ipr.link_lookup(ifname=ifname))
        return int(found[0]) if found else None

    async def link_info(self, index: int) -> tuple[str, int] | None:
        return await self._run(lambda: _link_answer(self._ipr.get_links(index)))

    async def link_set(self, index: int, **changes: Any) -> None:
        await self._run(lambda: self._ipr.link("set", index=index, **changes))

    async def addr(self, command: str, **kwargs: Any) -> None:
        await self._run(lambda: self._ipr.addr(command, **kwargs))

    async def route(self, command: str, **kwargs: Any) -> None:
        await self._run(lambda: self._ipr.route(command, **kwargs))

    async def route_get(self, dst: IPAddress, family: int) -> RoutePath:
        return await self._run(
            lambda: _route_answer(self._ipr.route("get", dst=str(dst), family=family))
        )

    async def close(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            await self._run(ipr.close)
        self._executor.shutdown(wait=False)


# --------------------------------------------------------------------------- async


class AsyncRtnl:
    """pyroute2's `AsyncIPRoute`, on the running loop."""

    name = "AsyncIPRoute"

    def __init__(self) -> None:
        self._ipr: Any = pyroute2.AsyncIPRoute()

    async def start(self) -> None:
        await self._ipr.link_lookup(ifname="lo")  # opens the socket here, in this namespace

    async def link_index(self, ifname: str) -> int | None:
        found = await self._ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    async def link_info(self, index: int) -> tuple[str, int] | None:
        return _link_answer(await self._ipr.link("get", index=index))

    async def link_set(self, index: int, **changes: Any) -> None:
        await self._ipr.link("set", index=index, **changes)

    async def addr(self, command: str, **kwargs: Any) -> None:
        await self._ipr.addr(command, **kwargs)

    async def route(self, command: str, **kwargs: Any) -> None:
        await self._ipr.route(command, **kwargs)

    async def route_get(self, dst: IPAddress, family: int) -> RoutePath:
        return _route_answer(await self._ipr.route("get", dst=str(dst), family=family))

    async def close(self) -> None:
        self._ipr.close()


# --------------------------------------------------------------------------- choice


def pyroute2_version() -> str:
    """The installed pyroute2's version: the module's own, else (Debian's module says
    "unknown") its metadata. importlib.metadata is imported only then: on the newest stack it
    would be the daemon's only user (about 1.2 MB of RSS; pyroute2 0.7 loads it anyway)."""
    version = str(getattr(pyroute2, "__version__", "unknown"))
    if version[:1].isdigit():
        return version
    import importlib.metadata

    try:
        return importlib.metadata.version("pyroute2")
    except importlib.metadata.PackageNotFoundError:
        return version


def has_async_iproute() -> bool:
    return hasattr(pyroute2, "AsyncIPRoute")


async def open_rtnl(backend: str | None = None) -> ThreadRtnl | AsyncRtnl:
    """A started backend: `AsyncIPRoute` where pyroute2 has it, else the worker thread.

    `backend` ("async" or "thread", default `$QUBES_MIRAGEVPN_NETLINK`) forces one."""
    wanted = (
        backend or os.environ.get(BACKEND_ENV) or ("async" if has_async_iproute() else "thread")
    )
    rtnl: ThreadRtnl | AsyncRtnl
    if wanted == "async":
        if not has_async_iproute():
            raise RuntimeError(f"pyroute2 {pyroute2_version()} has no AsyncIPRoute")
        rtnl = AsyncRtnl()
    elif wanted == "thread":
        rtnl = ThreadRtnl()
    else:
        raise ValueError(f"unknown netlink backend {wanted!r} (async or thread)")
    try:
        await rtnl.start()
    except BaseException:
        await rtnl.close()
        raise
    log.info("netlink through %s (pyroute2 %s)", rtnl.name, pyroute2_version())
    return rtnl
