"""The gateway's firewall policy as values: Blocked | Connecting(endpoints) | Connected(tunnel).

A policy says what the daemon is doing; `Facts` say what the qube looks like (uplink name, the
AppVM interface group, /connected-ips, Qubes' virtual DNS addresses, our socket mark). The pair
is turned into one nftables document by `gateway.ruleset` (pure) and applied by `gateway.nft`.
What each policy lets through is specified in docs/security.md.

    facts = Facts(uplink="eth0", socket_mark=0x6D76, connected_ips=frozenset({ip("10.137.0.5")}))
    apply_policy(Blocked(), facts)
    apply_policy(Connecting(endpoints=(Endpoint(ip("198.51.100.7"), 1194, "udp"),)), facts)
    apply_policy(Connected(tunnel=Tunnel(device="tun0", mtu=1500, ipv6=False,
                                          dns=(ip("10.8.0.1"),), endpoint=...)), facts)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Proto: TypeAlias = Literal["udp", "tcp"]

# Qubes' defaults (qubes/vm/mix/net.py, network/setup-ip, vif-route-qubes).
QUBES_UPLINK = "eth0"
QUBES_UPLINK_GROUP = 1
QUBES_APPVM_GROUP = 2
QUBES_VIRTUAL_DNS = (ipaddress.IPv4Address("10.139.1.1"), ipaddress.IPv4Address("10.139.1.2"))

_IFNAMSIZ = 16  # the kernel's interface name limit, including the NUL

REPORT_QUEUE = 0x6D76  # the NFQUEUE number of the blocked-traffic report ("mv")
REPORT_RATE = 20  # packets a second, at most, into that queue (nftables `limit`, burst twice)


class PolicyError(ValueError):
    """A policy or facts value that cannot describe a real firewall (the caller's mistake)."""


def _check_ifname(what: str, name: str) -> None:
    if not name or len(name.encode()) >= _IFNAMSIZ or "/" in name or name.strip() != name:
        raise PolicyError(f"{what} {name!r} is not a valid interface name")


def _check_unicast(what: str, address: IPAddress) -> None:
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise PolicyError(f"{what} {address} is not a unicast address")
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise PolicyError(f"{what} {address} is not a unicast address")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One resolved server endpoint the daemon's marked sockets may reach over the uplink."""

    address: IPAddress
    port: int
    proto: Proto

    def __post_init__(self) -> None:
        _check_unicast("endpoint address", self.address)
        if not 1 <= self.port <= 65535:
            raise PolicyError(f"endpoint port {self.port} is outside 1..65535")
        if self.proto not in ("udp", "tcp"):
            raise PolicyError(f"endpoint protocol {self.proto!r} is neither 'udp' nor 'tcp'")


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """How refused AppVM flows are reported (docs/security.md, "The blocked-traffic report").

    With `queue`, the first packet of each new refused TCP/UDP flow (once per AppVM and
    destination in a while, at most `rate` a second) goes to that NFQUEUE, without `bypass`:
    the daemon reads it and drops it, and with no daemon the kernel drops it. With `queue`
    None, nftables counts such flows per AppVM and destination in a set the daemon reads."""

    queue: int | None = REPORT_QUEUE
    rate: int = REPORT_RATE

    def __post_init__(self) -> None:
        if self.queue is not None and not 0 <= self.queue <= 0xFFFF:
            raise PolicyError(f"NFQUEUE number {self.queue} is outside 0..65535")
        if not 1 <= self.rate <= 10_000:
            raise PolicyError(f"report rate {self.rate} is outside 1..10000 packets a second")


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the firewall needs to know about the qube; from QubesDB (or the YAML stand-in).

    - `uplink`: the interface towards sys-net (Qubes: `eth0`, interface group 1).
    - `appvm_group`: the interface group of the AppVMs' vifs (Qubes: 2, set by vif-route-qubes).
    - `connected_ips`: /connected-ips and /connected-ips6; sources AppVMs may use (anti-spoofing).
    - `virtual_dns`: /qubes-netvm-primary-dns, -secondary-dns: what AppVMs send DNS queries to.
    - `uplink_dns`: /qubes-primary-dns, -secondary-dns: the resolvers the daemon may ask, over
      the uplink, for the address of a hostname `remote` (only while Connecting, only marked).
    - `socket_mark`: SO_MARK of the daemon's own sockets (transport and uplink DNS).
    - `report`: how refused AppVM flows are reported to the daemon (None: not at all, as the
      `block` command at boot installs it).
    """

    socket_mark: int
    uplink: str = QUBES_UPLINK
    appvm_group: int = QUBES_APPVM_GROUP
    connected_ips: frozenset[IPAddress] = field(default_factory=frozenset)
    virtual_dns: tuple[ipaddress.IPv4Address, ...] = QUBES_VIRTUAL_DNS
    uplink_dns: tuple[IPAddress, ...] = QUBES_VIRTUAL_DNS
    report: Report | None = None

    def __post_init__(self) -> None:
        _check_ifname("uplink interface", self.uplink)
        if not 1 <= self.socket_mark <= 0xFFFFFFFF:
            raise PolicyError(f"socket mark {self.socket_mark:#x} is not a non-zero 32-bit value")
        if not 0 < self.appvm_group <= 0xFFFFFFFF:
            raise PolicyError(f"AppVM interface group {self.appvm_group} is out of range")
        for address in self.connected_ips:
            _check_unicast("connected AppVM address", address)
        for dns in self.virtual_dns:
            if not isinstance(dns, ipaddress.IPv4Address):
                raise PolicyError(f"Qubes virtual DNS address {dns} is not IPv4")
            _check_unicast("Qubes virtual DNS address", dns)
        for server in self.uplink_dns:
            _check_unicast("uplink DNS address", server)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tunnel:
    """The established tunnel: device, MTU, whether it carries IPv6, DNS for the AppVMs.

    `dns` are the resolvers the AppVMs' queries to Qubes' virtual DNS go to (pushed by the server
    or set in settings.yaml). Only IPv4 ones can stand in for Qubes' IPv4 virtual addresses; with
    none, DNS from the AppVMs is refused. `endpoint` is the server this session talks to."""

    device: str
    mtu: int
    ipv6: bool
    dns: tuple[IPAddress, ...]
    endpoint: Endpoint

    def __post_init__(self) -> None:
        _check_ifname("tunnel device", self.device)
        if not 576 <= self.mtu <= 65535:
            raise PolicyError(f"tunnel MTU {self.mtu} is outside 576..65535")
        for dns in self.dns:
            _check_unicast("tunnel DNS server", dns)

    @property
    def dns4(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The tunnel's IPv4 resolvers, the ones a redirect of Qubes' virtual DNS can use."""
        return tuple(a for a in self.dns if isinstance(a, ipaddress.IPv4Address))


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocked:
    """Nothing forwarded, AppVMs refused at once, the qube's own processes off the uplink."""

    name: Literal["blocked"] = "blocked"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connecting:
    """Blocked, except the daemon's marked sockets to these endpoints (and, when a remote is a
    hostname, to the uplink DNS servers)."""

    endpoints: tuple[Endpoint, ...]
    resolve_via_uplink_dns: bool = False
    name: Literal["connecting"] = "connecting"

    def __post_init__(self) -> None:
        if not self.endpoints and not self.resolve_via_uplink_dns:
            raise PolicyError("Connecting needs at least one endpoint or uplink DNS resolution")


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """AppVM traffic through the tunnel device only; the session's endpoint stays reachable."""

    tunnel: Tunnel
    name: Literal["connected"] = "connected"


Policy: TypeAlias = Blocked | Connecting | Connected
