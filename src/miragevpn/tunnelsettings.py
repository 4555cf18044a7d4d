"""From a configuration plus a PUSH_REPLY to the `TunnelSettings` the runtime applies.

Pushed values override configured ones (OpenVPN applies pushed options on top of its
options). `topology` decides how `ifconfig`'s second address is read (reference §7.3):
subnet → a netmask; net30/p2p → the point-to-point peer, which is also the default route
gateway. Route gateways are resolved here; `net_gateway`/`remote_host` routes need the
runtime's original gateway and are left out (reported by the caller).

The checks that need more than one directive are here, for configured and pushed values alike
(issue 8, finding 2): our tunnel address is never the server's address; a `topology subnet`
netmask is contiguous and at least /8 (`values.MIN_TUNNEL_PREFIX_V4`), else the kernel's prefix
route would carry that range into the tunnel around `route-nopull`; a p2p peer is unicast. A
refused address is left out with a note; the runtime ends the session if no address remains.
`covers_server` tells the runtime that some route covers the server (finding 10).
"""

from __future__ import annotations

import ipaddress

from .config import values
from .config.model import Config, IfConfig, Route, RouteGatewayKeyword, Topology
from .events import IPAddress, RouteSpec, TunnelSettings
from .push import PushedOptions

DEFAULT_TOPOLOGY = Topology.NET30  # OpenVPN 2.6 default (options.c)
# forward.c ipv6_send_icmp_unreachable: the ICMPv6 source when there is no ifconfig-ipv6 remote
BLOCK_IPV6_FALLBACK_SOURCE = ipaddress.IPv6Address("fe80::7")


def resolve_tunnel_settings(
    config: Config,
    pushed: PushedOptions,
    *,
    remote_address: IPAddress,
    cipher: str,
    key_derivation: str,
) -> tuple[TunnelSettings, tuple[str, ...]]:
    """The settings, and the notes (routes that could not be resolved) for the log."""
    notes: list[str] = []
    topology = pushed.topology or config.topology or DEFAULT_TOPOLOGY
    ifconfig = pushed.ifconfig or config.ifconfig
    ipv4: ipaddress.IPv4Interface | None = None
    ipv4_peer: ipaddress.IPv4Address | None = None
    gateway = pushed.route_gateway
    if gateway is None and isinstance(config.route_gateway, ipaddress.IPv4Address):
        gateway = config.route_gateway
    if ifconfig is not None:
        problem = _ifconfig_problem(ifconfig, topology, remote_address)
        if problem is not None:
            notes.append(
                f"ifconfig {ifconfig.local} {ifconfig.remote_or_netmask} refused: {problem}"
            )
        elif topology is Topology.SUBNET:
            prefix = values.netmask_prefix(ifconfig.remote_or_netmask)
            ipv4 = ipaddress.IPv4Interface((ifconfig.local, prefix or 32))
        else:
            ipv4 = ipaddress.IPv4Interface(f"{ifconfig.local}/32")
            ipv4_peer = ifconfig.remote_or_netmask
            gateway = gateway or ipv4_peer

    routes: list[RouteSpec] = []
    for route in (*config.routes, *pushed.routes):
        spec = _route(route, gateway, notes)
        if spec is not None:
            routes.append(spec)

    ifconfig6 = pushed.ifconfig_ipv6 or config.ifconfig_ipv6
    if ifconfig6 is not None and ifconfig6.interface.ip == remote_address:
        notes.append(f"ifconfig-ipv6 {ifconfig6.interface} refused: it is the server's address")
        ifconfig6 = None
    gateway6 = ifconfig6.remote if ifconfig6 is not None else None
    block_source = None
    if pushed.block_ipv6 or config.block_ipv6:
        block_source = gateway6 or BLOCK_IPV6_FALLBACK_SOURCE
    for route6 in (*config.routes_ipv6, *pushed.routes_ipv6):
        routes.append(
            RouteSpec(
                network=route6.network, gateway=route6.gateway or gateway6, metric=route6.metric
            )
        )

    redirect = pushed.redirect_gateway or config.redirect_gateway
    flags = redirect.flags if redirect is not None else frozenset()
    redirect_ipv4 = redirect is not None and "!ipv4" not in flags
    redirect_ipv6 = redirect is not None and "ipv6" in flags
    covers_server = any(remote_address in spec.network for spec in routes) or (
        redirect_ipv4 if remote_address.version == 4 else redirect_ipv6
    )
    settings = TunnelSettings(
        ipv4=ipv4,
        ipv4_peer=ipv4_peer,
        ipv6=ifconfig6.interface if ifconfig6 is not None else None,
        mtu=pushed.tun_mtu or config.tun_mtu,
        routes=tuple(routes),
        redirect_gateway_ipv4=redirect_ipv4,
        redirect_gateway_ipv6=redirect_ipv6,
        remote_address=remote_address,
        dhcp_options=(*config.dhcp_options, *pushed.dhcp_options),
        cipher=cipher,
        key_derivation=key_derivation,
        covers_server=covers_server,
        block_ipv6_source=block_source,
    )
    return settings, tuple(notes)


def _route(
    route: Route, gateway: ipaddress.IPv4Address | None, notes: list[str]
) -> RouteSpec | None:
    target = route.gateway
    if target is None or target is RouteGatewayKeyword.VPN_GATEWAY:
        return RouteSpec(network=route.network, gateway=gateway, metric=route.metric)
    if isinstance(target, ipaddress.IPv4Address):
        return RouteSpec(network=route.network, gateway=target, metric=route.metric)
    notes.append(f"route {route.network} via {target.value} is left to the system")
    return None


def _ifconfig_problem(
    ifconfig: IfConfig, topology: Topology, remote_address: IPAddress
) -> str | None:
    """Why `ifconfig` cannot be our tunnel address under `topology`, or None."""
    if ifconfig.local == remote_address:
        return "it is the server's address"
    if topology is Topology.SUBNET:
        prefix = values.netmask_prefix(ifconfig.remote_or_netmask)
        if prefix is None:
            return f"{ifconfig.remote_or_netmask} is not a netmask"
        if prefix < values.MIN_TUNNEL_PREFIX_V4:
            return (
                f"prefix /{prefix} is shorter than /{values.MIN_TUNNEL_PREFIX_V4}: it would "
                "route that whole range into the tunnel"
            )
        return None
    peer = ifconfig.remote_or_netmask
    problem = values.unicast_problem(peer)
    if problem is not None:
        return f"the peer {peer} is {problem}"
    if peer == ifconfig.local:
        return "the peer is our own address"
    return None
