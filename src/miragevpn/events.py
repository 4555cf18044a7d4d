"""What the client engine tells its runtime: a closed union of frozen, past-tense events.

The runtime takes events with `Client.next_event()` until it returns None and matches on them
exhaustively (`match` + `assert_never`). Events that ask for IO ("...Requested") must be acted on;
the others are for logging, status and configuring the tunnel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .challenge import Challenge, ChallengeKind
from .config.model import AddressFamily, DhcpOption, Proxy, Transport
from .errors import MirageVPNError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolutionRequested:
    """Resolve `host`; answer with `handle_resolved(addresses, now)` or `handle_resolve_failed`."""

    host: str
    family: AddressFamily


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyRoute:
    """Through `proxy` to the server `host` (its name as written: the proxy resolves it)."""

    proxy: Proxy
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRequested:
    """Open a transport to the remote; answer with `handle_connected` / `handle_connection_failed`.

    For UDP, "connected" means the socket exists (call `handle_connected` at once). With a
    proxy (`via`), `address`/`port` are the proxy's, the transport is TCP, and "connected"
    means the proxy's handshake (httpconnect.py, socks5.py) has opened the way to the server."""

    address: IPAddress
    port: int
    transport: Transport
    via: ProxyRoute | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectionRequested:
    """Close the current transport (a restart or the end of the session follows)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressReported:
    """A step of the connection, in plain words ("TLS handshake", "waiting for push reply")."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsEstablished:
    version: str  # e.g. "TLSv1.3"
    cipher: str
    peer_subject: str  # RFC 4514 subject of the server certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """A route through the tunnel, with the gateway already resolved."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: IPAddress | None  # None: on-link through the tun device
    metric: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelSettings:
    """Everything the runtime needs to configure the tun device, after PUSH_REPLY is applied."""

    ipv4: ipaddress.IPv4Interface | None  # our address with its prefix
    ipv4_peer: ipaddress.IPv4Address | None  # p2p peer (net30/p2p topology), else None
    ipv6: ipaddress.IPv6Interface | None
    mtu: int
    routes: tuple[RouteSpec, ...]
    redirect_gateway_ipv4: bool  # route 0.0.0.0/1 + 128.0.0.0/1 through the tunnel
    redirect_gateway_ipv6: bool  # route ::/1 + 8000::/1 through the tunnel
    remote_address: IPAddress  # the server: keep a host route to it via the original gateway
    dhcp_options: tuple[DhcpOption, ...]
    cipher: str
    key_derivation: str  # "tls-ekm" or "tls1-prf"
    # Some route (or the redirect-gateway halves) covers `remote_address`: without a host route
    # to the server via the original gateway first, the tunnel would route itself into itself.
    # Set by the engine (tunnelsettings.py) so the runtime need not recompute it.
    covers_server: bool = False
    # `block-ipv6` (configured or pushed): the runtime answers every IPv6 packet it reads from
    # the tun with an ICMPv6 "no route" from this address (`icmp6.unreachable_reply`) instead of
    # sending it; None: IPv6 goes through the tunnel.
    block_ipv6_source: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelEstablished:
    settings: TunnelSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlMessageReceived:
    """A control message the engine does not act on itself (INFO, INFO_PRE, ...)."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRestarting:
    """The session was lost (ping-restart, server RESTART, TLS error...); the engine reconnects.

    The runtime keeps its fail-closed state; a new `TunnelEstablished` follows on success."""

    reason: str
    retry_in: float  # seconds until the next connection attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeRequested:
    """A one-time code is needed: ask the user `text` (show the typing only if `echo`) and
    answer with `answer_challenge(response, now=...)`; or `close()` to give up. The client
    waits without a deadline: how long a person may take is the runtime's decision.

    `dynamic`: the server asked after the password (CRV1); else the config's static-challenge,
    asked before connecting."""

    text: str
    echo: bool
    dynamic: bool
    response_required: bool = True

    @classmethod
    def of(cls, challenge: Challenge) -> ChallengeRequested:
        dynamic = challenge.kind is ChallengeKind.DYNAMIC
        required = challenge.response_required
        return cls(
            text=challenge.text, echo=challenge.echo, dynamic=dynamic, response_required=required
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded:
    """Terminal: AUTH_FAILED, HALT, ping-exit, retries exhausted, or `close()` completed."""

    reason: str
    error: MirageVPNError | None = None  # None for an orderly close


Event = (
    ResolutionRequested
    | ConnectionRequested
    | DisconnectionRequested
    | ProgressReported
    | TlsEstablished
    | TunnelEstablished
    | ControlMessageReceived
    | SessionRestarting
    | ChallengeRequested
    | SessionEnded
)
