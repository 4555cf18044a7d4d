"""The route-netlink backends: which one is chosen, and that each is what it says it is."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import pytest

from qubes_miragevpn.rtnl import (
    AsyncRtnl,
    ThreadRtnl,
    has_async_iproute,
    open_rtnl,
    pyroute2_version,
)
from tests.helpers.netns import Netns


def version() -> tuple[int, ...]:
    return tuple(int(part) for part in pyroute2_version().split(".")[:2])


def test_async_iproute_is_used_wherever_pyroute2_has_it() -> None:
    """0.9 runs a loop inside its sync IPRoute: there the async backend must be the default,
    not silently the worker thread."""
    assert has_async_iproute() == (version() >= (0, 9))


def test_unknown_or_missing_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown netlink backend 'bogus'"):
        asyncio.run(open_rtnl("bogus"))
    if not has_async_iproute():
        with pytest.raises(RuntimeError, match="has no AsyncIPRoute"):
            asyncio.run(open_rtnl("async"))


@pytest.mark.netns
def test_each_backend_answers_the_same(netns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    netns.run(["ip", "link", "set", "lo", "up"])
    backends = ["thread", *(["async"] if has_async_iproute() else [])]

    async def ask(backend: str) -> tuple[object, ...]:
        rtnl = await open_rtnl(backend)
        try:
            assert isinstance(rtnl, AsyncRtnl if backend == "async" else ThreadRtnl)
            lo = await rtnl.link_index("lo")
            assert lo is not None
            path = await rtnl.route_get(ipaddress.ip_address("127.0.0.1"), socket.AF_INET)
            return (
                lo,
                await rtnl.link_index("nothing-here"),
                await rtnl.link_info(lo),
                path.oif == lo,
                path.local,
                path.gateway,
            )
        finally:
            await rtnl.close()

    answers = {b: netns.call(lambda b=b: asyncio.run(ask(b))) for b in backends}
    for answer in answers.values():
        assert answer == (1, None, ("lo", 65536), True, True, None)
    monkeypatch.setenv("QUBES_MIRAGEVPN_NETLINK", "thread")
    forced = netns.call(lambda: asyncio.run(open_rtnl()))
    assert isinstance(forced, ThreadRtnl)
    asyncio.run(forced.close())


@pytest.mark.netns
def test_the_thread_backend_uses_one_thread_never_the_loop(netns: Netns) -> None:
    seen: set[int] = set()

    async def main() -> None:
        rtnl = ThreadRtnl()
        await rtnl.start()
        try:
            original = rtnl._ipr.link_lookup

            def spy(**kwargs: object) -> object:
                seen.add(threading.get_ident())
                return original(**kwargs)

            rtnl._ipr.link_lookup = spy
            for _ in range(5):
                await rtnl.link_index("lo")
        finally:
            await rtnl.close()
        assert threading.get_ident() not in seen

    netns.call(lambda: asyncio.run(main()))
    assert len(seen) == 1
