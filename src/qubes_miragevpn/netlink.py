"""The kernel network state of a tunnel: MTU, addresses, routes; applied and reverted exactly.

`Netlink.apply(ifname, settings, allow_routes=...)` configures the tun device for
`TunnelSettings` through route netlink (`rtnl.open_rtnl`: our own netlink socket on the event
loop, which never blocks). Every change is logged
before it is made, in words a person could replay ("adding route 0.0.0.0/1 dev tun0"), and
its exact inverse is recorded; `revert()` undoes the tunnel's changes in reverse order,
touching only what we added.

What the server pushed is applied one change at a time, and each may fail (a route whose
gateway is not on the tunnel: ENETUNREACH; an MTU the kernel refuses; an IPv6 address on a
device whose MTU is below 1280): a failed change is logged, skipped and counted in the
`ApplyReport`, and the rest goes on. Only when no address at all could be added is the tunnel
unusable (`TunnelSetupError`).

Routes are ours to choose, not the kernel's:
- addresses are added with IFA_F_NOPREFIXROUTE, so the kernel adds no prefix route for them
  (an `ifconfig-ipv6 x/0` would otherwise route all IPv6 into the tunnel, whatever
  `route-nopull` says); the on-link route of the tunnel's subnet (or to the p2p peer) is added
  explicitly, and only when routes are allowed (`allow_routes=False` for `route-nopull`). Routes
  whose gateway is inside the tunnel's own subnet are then added `onlink`.
- a route that would cover the server's address (redirect-gateway's halves, a pushed
  `route <server>`, a wide on-link subnet) gets the host route to the server through the
  pre-tunnel path first; if that path is unknown or is the tunnel itself, the route is refused
  with a log line (and counted).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from miragevpn.events import TunnelSettings

from .nlmsg import IFA_F_NODAD, IFA_F_NOPREFIXROUTE, RT_SCOPE_LINK, RTNH_F_ONLINK, NetlinkError
from .rtnl import RoutePath, Rtnl, open_rtnl
from .tun import Tun, open_tun

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Undo = tuple[str, Callable[[], Awaitable[None]]]
# What a failed change may raise: the kernel's refusal (NetlinkError, an OSError), no answer
# (TimeoutError), or a value it cannot even encode.
STEP_ERRORS = (OSError, ValueError, TypeError)


class TunnelSetupError(Exception):
    """The tunnel cannot be used: our side (device gone, no address could be added)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A change that was not made, and why (in words)."""

    change: str
    reason: str


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What `apply` did: changes made, changes skipped (logged and counted)."""

    applied: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()


class NetworkConfigurator(Protocol):
    """Creates the tun device and applies/reverts the tunnel's addresses and routes."""

    def open_tun(self, name: str) -> Tun: ...

    async def apply(
        self, ifname: str, settings: TunnelSettings, *, allow_routes: bool = True
    ) -> ApplyReport:
        """Configure `ifname` for `settings` (after reverting any previous settings)."""
        ...

    async def revert(self) -> None:
        """Undo everything `apply` did, in reverse order."""
        ...

    async def close(self) -> None: ...


def _family(address: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _error_words(error: BaseException) -> str:
    if isinstance(error, NetlinkError):
        return f"{errno.errorcode.get(error.code, error.code)}: {error}"
    return str(error) or type(error).__name__


@dataclass
class _Run:
    """One `apply` in progress: the undo actions so far and the report being built."""

    undo: list[Undo] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, change: str, reason: str) -> None:
        log.warning("not %s: %s; skipped", change, reason)
        self.skipped.append(Skipped(change, reason))


class Netlink:
    """`NetworkConfigurator` on the kernel, in the namespace where `open()` was awaited."""

    def __init__(self, rtnl: Rtnl) -> None:
        self._rtnl = rtnl
        self._undo: list[Undo] = []
        self._applied: tuple[TunnelSettings, bool] | None = None

    @classmethod
    async def open(cls) -> Netlink:
        return cls(await open_rtnl())

    # ---- the protocol

    def open_tun(self, name: str) -> Tun:
        return open_tun(name)

    async def apply(
        self, ifname: str, settings: TunnelSettings, *, allow_routes: bool = True
    ) -> ApplyReport:
        if self._applied == (settings, allow_routes):
            log.info("tunnel settings unchanged: keeping %s as configured", ifname)
            return ApplyReport()
        await self.revert()
        run = _Run()
        try:
            await self._configure(run, ifname, settings, allow_routes)
        except BaseException:
            self._undo = run.undo
            await self.revert()
            raise
        self._undo = run.undo
        self._applied = (settings, allow_routes)
        return ApplyReport(applied=tuple(run.applied), skipped=tuple(run.skipped))

    async def revert(self) -> None:
        self._applied = None
        undo, self._undo = self._undo, []
        for words, action in reversed(undo):
            log.info("%s", words)
            try:
                await action()
            except STEP_ERRORS as e:
                # ENODEV/ESRCH/EADDRNOTAVAIL: already gone (e.g. the tun device was closed).
                log.info("  (already gone: %s)", _error_words(e))

    async def close(self) -> None:
        try:
            await self.revert()
        finally:
            await self._rtnl.close()

    # ---- the steps

    async def _configure(
        self, run: _Run, ifname: str, s: TunnelSettings, allow_routes: bool
    ) -> None:
        rtnl = self._rtnl
        index = await rtnl.link_index(ifname)
        if index is None:
            raise TunnelSetupError(f"no interface named {ifname}")

        # Decided before anything is changed, so that no change of ours alters the answers:
        # which addresses may be used, every route the tunnel wants, the path to the server.
        server = s.remote_address
        wanted: list[tuple[IPInterface, ipaddress.IPv4Address | None]] = []
        for interface, peer in ((s.ipv4, s.ipv4_peer), (s.ipv6, None)):
            if interface is None:
                continue
            conflict = await self._conflict(interface.ip, server, index)
            if conflict is None and peer is not None:
                conflict = await self._conflict(peer, server, index)
            if conflict is None:
                wanted.append((interface, peer))
            else:
                run.skip(f"adding address {interface} to {ifname}", conflict)
        onlink = _onlink_networks(wanted)
        routes: list[tuple[IPNetwork, IPAddress | None, int | None, str]] = []
        if allow_routes:
            routes += [(net, None, None, "on-link route") for net in onlink]
        if s.redirect_gateway_ipv4:
            routes += [(ipaddress.ip_network(n), None, None, "route") for n in _HALVES_V4]
        if s.redirect_gateway_ipv6:
            routes += [(ipaddress.ip_network(n), None, None, "route") for n in _HALVES_V6]
        routes += [(r.network, r.gateway, r.metric, "route") for r in s.routes]
        server_path: RoutePath | None = None
        server_path_error = ""
        if any(_covers(net, server) for net, *_ in routes):
            try:
                server_path = await rtnl.route_get(server, _family(server))
            except STEP_ERRORS as e:
                server_path_error = _error_words(e)
            else:
                if server_path.oif == index:
                    server_path, server_path_error = None, f"it already goes through {ifname}"

        info = await rtnl.link_info(index)
        old_mtu = info[1] if info else None
        await self._step(
            run,
            f"setting MTU of {ifname} to {s.mtu}",
            lambda: rtnl.link_set(index, mtu=s.mtu),
            None
            if old_mtu is None or old_mtu == s.mtu
            else (
                f"restoring MTU {old_mtu} on {ifname}",
                lambda: rtnl.link_set(index, mtu=old_mtu),
            ),
        )
        log.info("bringing %s up", ifname)
        await rtnl.link_set(index, up=True)  # without it nothing works: not skippable

        added = 0
        for interface, peer in wanted:
            added += await self._add_address(run, ifname, index, interface, peer)
        if not added:
            raise TunnelSetupError(
                f"no address could be added to {ifname}: the tunnel is unusable"
                + (f" ({run.skipped[-1].reason})" if run.skipped else "")
            )

        host_route_added = False
        for network, gateway, metric, what in routes:
            words = _route_words(what, network, gateway, ifname, metric)
            if _covers(network, server):
                if server_path is None:
                    run.skip(
                        f"adding {words}",
                        f"it would cover the server {server} and the path to the server "
                        f"is not known ({server_path_error or 'no route'})",
                    )
                    continue
                if not host_route_added:
                    host_route_added = await self._add_server_route(run, server, server_path)
                    if not host_route_added:
                        run.skip(
                            f"adding {words}",
                            f"it would cover the server {server}, whose host route failed",
                        )
                        continue
            flags = 0
            if gateway is not None and not allow_routes and _inside(gateway, onlink):
                flags = RTNH_F_ONLINK  # no on-link route (route-nopull): say it ourselves
            await self._add_route(run, ifname, index, network, gateway, metric, what, flags)

    async def _conflict(self, address: IPAddress, server: IPAddress, index: int) -> str | None:
        """Why `address` must not be a tunnel address here, or None: the server's address,
        one of this system's own, or inside a subnet connected on another interface (the LAN
        gateway's address, a neighbour's)."""
        if address == server:
            return f"{address} is the server's address"
        try:
            path = await self._rtnl.route_get(address, _family(address))
        except STEP_ERRORS:
            return None  # no route at all: nothing it could collide with
        if path.oif == index:
            return None
        if path.local or path.gateway is None:
            info = await self._rtnl.link_info(path.oif)
            where = info[0] if info else f"#{path.oif}"
            if path.local:
                return f"{address} is already an address of this system"
            return f"{address} is inside a subnet connected on {where}"
        return None

    async def _add_address(
        self,
        run: _Run,
        ifname: str,
        index: int,
        interface: IPInterface,
        peer: ipaddress.IPv4Address | None,
    ) -> int:
        kwargs: dict[str, Any] = {
            "index": index,
            "family": _family(interface.ip),
            "address": str(interface.ip),
            "prefixlen": interface.network.prefixlen,
        }
        words = f"address {interface}"
        if peer is not None:  # net30 / p2p: local address with a point-to-point peer
            kwargs.update(local=str(interface.ip), address=str(peer), prefixlen=32)
            words = f"address {interface.ip} peer {peer}"
        flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if interface.version == 6 else 0)
        rtnl = self._rtnl
        return int(
            await self._step(
                run,
                f"adding {words} to {ifname} (no prefix route)",
                lambda: rtnl.addr("add", flags=flags, **kwargs),
                (f"removing {words} from {ifname}", lambda: rtnl.addr("del", **kwargs)),
            )
        )

    async def _add_server_route(self, run: _Run, server: IPAddress, path: RoutePath) -> bool:
        gateway, oif = path.gateway, path.oif
        info = await self._rtnl.link_info(oif)
        ifname = info[0] if info else f"#{oif}"
        network = ipaddress.ip_network(server)
        return await self._add_route(
            run, ifname, oif, network, gateway, None, "host route", 0, existing_ok=True
        )

    async def _add_route(
        self,
        run: _Run,
        ifname: str,
        index: int,
        network: IPNetwork,
        gateway: IPAddress | None,
        metric: int | None,
        what: str,
        flags: int,
        *,
        existing_ok: bool = False,
    ) -> bool:
        """Add a route; True if it is in place (ours, or, with `existing_ok`, someone's)."""
        kwargs: dict[str, Any] = {"dst": str(network), "oif": index, "family": _family(network)}
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        elif network.version == 4:
            kwargs["scope"] = RT_SCOPE_LINK  # as `ip route add ... dev X`: gateways may use it
        if metric is not None:
            kwargs["priority"] = metric
        if flags:
            kwargs["flags"] = flags
        words = _route_words(what, network, gateway, ifname, metric) + (" onlink" if flags else "")
        rtnl = self._rtnl
        try:
            return await self._step(
                run,
                f"adding {words}",
                lambda: rtnl.route("add", **kwargs),
                (f"removing {words}", lambda: rtnl.route("del", **kwargs)),
                quiet={errno.EEXIST},
            )
        except NetlinkError:  # EEXIST: someone else's route; leave it alone, also on revert
            log.warning("%s already exists: leaving it as it is", words)
            return existing_ok

    async def _step(
        self,
        run: _Run,
        words: str,
        action: Callable[[], Awaitable[None]],
        undo: Undo | None,
        *,
        quiet: frozenset[int] | set[int] = frozenset(),
    ) -> bool:
        """Log `words`, do `action`, register its undo; a failure is logged, skipped and
        counted (False). NetlinkErrors whose code is in `quiet` are raised to the caller."""
        log.info("%s", words)
        try:
            await action()
        except STEP_ERRORS as e:
            if isinstance(e, NetlinkError) and e.code in quiet:
                raise
            run.skip(words, _error_words(e))
            return False
        run.applied.append(words)
        if undo is not None:
            run.undo.append(undo)
        return True


_HALVES_V4 = ("0.0.0.0/1", "128.0.0.0/1")
_HALVES_V6 = ("::/1", "8000::/1")


def _onlink_networks(
    addresses: list[tuple[IPInterface, ipaddress.IPv4Address | None]],
) -> list[IPNetwork]:
    """The routes the kernel would have added for the tunnel's addresses: the peer's host
    route (p2p), else the address's subnet (none for a single-address prefix)."""
    networks: list[IPNetwork] = []
    for interface, peer in addresses:
        if peer is not None:
            networks.append(ipaddress.ip_network(peer))
        elif interface.network.num_addresses > 1:
            networks.append(interface.network)
    return networks


def _covers(network: IPNetwork, address: IPAddress) -> bool:
    return network.version == address.version and address in network


def _inside(address: IPAddress, networks: list[IPNetwork]) -> bool:
    return any(_covers(n, address) for n in networks)


def _route_words(
    what: str, network: IPNetwork, gateway: IPAddress | None, ifname: str, metric: int | None
) -> str:
    words = f"{what} {network}"
    if gateway is not None:
        words += f" via {gateway}"
    words += f" dev {ifname}"
    if metric is not None:
        words += f" metric {metric}"
    return words
