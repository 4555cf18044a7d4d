"""The gateway's routes: everything forwarded goes into the tunnel; the server stays on the uplink.

A VPN qube routes differently from the unix client (`qubes_miragevpn.netlink`), whatever the
server pushes:

    tun device      opened once by the daemon and kept for its whole life (reconnects, profile
                    switches); the kernel removes it, with its routes, when the daemon exits
    addresses       exactly the session's (others on the device are removed)
    routes          0.0.0.0/1 + 128.0.0.0/1 via the tunnel (and ::/1 + 8000::/1 when the tunnel
                    has IPv6): all AppVM traffic, pushed or not; the pushed routes as well
    server          a host route `server via <qubes-gateway> dev eth0 onlink`, put in place
                    before each connect and put back after the uplink went down and up (Qubes
                    restores only its default route, and a flap deletes every route on eth0);
                    under it, `unreachable server metric 4294967295`, which no flap removes:
                    while the uplink is down the daemon's own packets to the server fail at
                    once instead of following 0.0.0.0/1 into its own tunnel (a loop)

The firewall, not the routing, is what keeps traffic off the uplink: a missing route can make a
packet go nowhere, never elsewhere. Every change is logged before it is made; `replace` makes
each step idempotent, so applying twice is harmless. Netlink goes through the runtime's `Rtnl`
(`qubes_miragevpn.rtnl`: our own route-netlink socket on the event loop).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Any

from miragevpn.events import TunnelSettings

from ..nlmsg import IFA_F_NODAD, RTN_UNREACHABLE, RTNH_F_ONLINK, NetlinkError
from ..rtnl import Rtnl
from ..tun import Tun, open_tun

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
FALLBACK_METRIC = 0xFFFFFFFF  # the server's unreachable route: only when the uplink's is gone
ALL_IPV4 = (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1"))
ALL_IPV6 = (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1"))


def _family(address: IPAddress | IPNetwork | IPInterface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def tunnel_routes(settings: TunnelSettings) -> list[tuple[IPNetwork, IPAddress | None]]:
    """(network, gateway or None for on-link) of every route the gateway sends into the tun."""
    routes: list[tuple[IPNetwork, IPAddress | None]] = []
    if settings.ipv4 is not None:
        routes += [(net, None) for net in ALL_IPV4]
    if settings.ipv6 is not None:
        routes += [(net, None) for net in ALL_IPV6]
    for route in settings.routes:
        if route.network.prefixlen > 0 and (route.network, route.gateway) not in routes:
            routes.append((route.network, route.gateway))
    return routes


Address = tuple[IPInterface, ipaddress.IPv4Address | None]  # (address/prefix, p2p peer)


def tunnel_addresses(settings: TunnelSettings) -> list[Address]:
    """The session's addresses on the tun: IPv4 (with its p2p peer in net30/p2p), IPv6."""
    found: list[Address] = []
    if settings.ipv4 is not None:
        if settings.ipv4_peer is not None:
            found.append((ipaddress.ip_interface(f"{settings.ipv4.ip}/32"), settings.ipv4_peer))
        else:
            found.append((settings.ipv4, None))
    if settings.ipv6 is not None:
        found.append((settings.ipv6, None))
    return found


class GatewayRouting:
    """The tun device and the routes of the gateway, in the current namespace."""

    def __init__(self, rtnl: Rtnl) -> None:
        self._rtnl = rtnl
        self._addresses: list[Address] = []  # what we put on the tun (the daemon owns it)
        self._server: tuple[IPAddress, IPAddress, str] | None = None  # (server, gateway, uplink)

    async def close(self) -> None:
        await self._rtnl.close()

    def open_tun(self, name: str) -> Tun:
        tun = open_tun(name)
        self._addresses = []
        return tun

    # ---- the tunnel

    async def configure_tunnel(self, ifname: str, settings: TunnelSettings) -> None:
        """MTU, link up, exactly the session's addresses, the gateway's routes into `ifname`."""
        index = await self._index(ifname)
        log.info("setting MTU of %s to %d and bringing it up", ifname, settings.mtu)
        await self._rtnl.link_set(index, mtu=settings.mtu, up=True)
        wanted = tunnel_addresses(settings)
        for address in [a for a in self._addresses if a not in wanted]:
            await self._address("del", ifname, index, address)
            self._addresses.remove(address)
        for address in [a for a in wanted if a not in self._addresses]:
            await self._address("add", ifname, index, address)
            self._addresses.append(address)
        for network, gateway in tunnel_routes(settings):
            words = f"route {network}" + (f" via {gateway}" if gateway else "") + f" dev {ifname}"
            log.info("adding %s", words)
            kwargs: dict[str, Any] = {"dst": str(network), "oif": index, "family": _family(network)}
            if gateway is not None:
                kwargs["gateway"] = str(gateway)
            try:
                await self._rtnl.route("replace", **kwargs)
            except NetlinkError as e:  # a pushed route the kernel refuses: say so, carry on
                log.warning("cannot add %s: %s", words, e)

    async def _address(self, command: str, ifname: str, index: int, address: Address) -> None:
        interface, peer = address
        words = f"address {interface}" + (f" peer {peer}" if peer else "")
        log.info(
            "%s %s %s %s",
            "adding" if command == "add" else "removing",
            words,
            "to" if command == "add" else "from",
            ifname,
        )
        kwargs: dict[str, Any] = {
            "index": index,
            "prefixlen": interface.network.prefixlen,
            "family": _family(interface),
        }
        if peer is not None:
            kwargs.update(local=str(interface.ip), address=str(peer))
        else:
            kwargs["address"] = str(interface.ip)
        if interface.version == 6 and command == "add":
            kwargs["flags"] = IFA_F_NODAD
        try:
            await self._rtnl.addr(command, **kwargs)
        except NetlinkError as e:
            if command == "add" and e.code == errno.EEXIST:
                return
            if command == "del" and e.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return
            raise

    # ---- the server

    async def ensure_server_route(self, server: IPAddress, gateway: IPAddress, uplink: str) -> bool:
        """Make `server` reachable `via gateway dev uplink onlink`, whatever the tun routes say;
        the previous server's host route (another profile, another remote) is removed. True if
        a route was (re)added; False if the kernel already sends `server` that way. Raises
        OSError (NetlinkError: the kernel's refusal) when the uplink is down or gone (the
        caller retries later)."""
        wanted = (server, gateway, uplink)
        if self._server is not None and self._server != wanted:
            await self._remove_server_route(*self._server)
            self._server = None
        host = f"{server}/{server.max_prefixlen}"
        if self._server != wanted:
            log.info(
                "adding unreachable %s metric %d (never into the tunnel)", server, FALLBACK_METRIC
            )
            await self._rtnl.route(
                "replace",
                dst=host,
                family=_family(server),
                route_type=RTN_UNREACHABLE,
                priority=FALLBACK_METRIC,
            )
        index = await self._index(uplink)
        if self._server == wanted:
            try:
                path = await self._rtnl.route_get(server, _family(server))
            except OSError:  # NetlinkError included
                path = None  # unreachable: the uplink's route is gone
            if path is not None and path.oif == index and path.gateway == gateway:
                return False
        log.info("adding host route %s via %s dev %s onlink (the server, off the tunnel)", *wanted)
        self._server = wanted  # the fallback is in place, whatever happens next
        await self._rtnl.route(
            "replace",
            dst=host,
            gateway=str(gateway),
            oif=index,
            flags=RTNH_F_ONLINK,
            family=_family(server),
        )
        return True

    async def _remove_server_route(
        self, server: IPAddress, gateway: IPAddress, uplink: str
    ) -> None:
        log.info("removing the routes to %s (via %s dev %s; unreachable)", server, gateway, uplink)
        host = f"{server}/{server.max_prefixlen}"
        # (route type, metric): the host route (metric 0, any type), then the unreachable one
        for route_type, metric in ((None, 0), (RTN_UNREACHABLE, FALLBACK_METRIC)):
            try:
                await self._rtnl.route(
                    "del",
                    dst=host,
                    family=_family(server),
                    route_type=route_type,
                    priority=metric,
                )
            except OSError as e:  # NetlinkError included
                if e.errno not in (errno.ESRCH, errno.ENOENT):
                    log.warning("cannot remove a host route to %s: %s", server, e)

    async def _index(self, ifname: str) -> int:
        index = await self._rtnl.link_index(ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"no interface named {ifname}")
        return index
