"""The daemon's decisions, as pure functions of values: no IO, no clock, no firewall calls.

The daemon (`gateway.daemon`) is a shell around these. It keeps one `Phase` value, asks this
module what each session hook, session end or QubesDB change makes of it, and applies the
policy `policy_for(phase)` returns. So every rule of the life cycle is here, in one table, and
unit-tested without namespaces:

    what happened                         next phase                      policy
    ------------------------------------  ------------------------------  -------------------
    daemon started                        Waiting("starting")             Blocked
    a remote is a hostname                Resolving(hosts)                Connecting(uplink DNS)
    before each connect (endpoint E)      Dialing(E)                      Connecting(E)
    tunnel up (settings)                  Up(tunnel)                      Connected(tunnel)
    session restarting (reason, in N s)   Waiting(reason)                 Blocked
    a one-time code is asked              Asking(text), ANSWER_TIMEOUT    Blocked
    session ended: no code in time        Held(why)                       Blocked, no retry
    session ended: HALT, AUTH_FAILED,     Held(why)                       Blocked, no retry
      a profile that cannot be used                                      until the profile
                                                                          changes or a restart
    session ended: anything else          Waiting(reason, back-off)       Blocked, retry
    profile selection changed             Waiting("profile changed")      Blocked, reconnect
    /connected-ips changed                the same phase                  the same, new sets
    applying a policy failed              Waiting / Held (the caller's)   Blocked

Blocked is the floor: every phase that is not Dialing or Up is Blocked, and the daemon never
has a phase whose policy is "open". `AUTH_FAILED,TEMP` never reaches `classify_end`: the engine
restarts the session itself (a `restarting` hook), like any other transient failure.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from miragevpn.config.model import Transport
from miragevpn.events import TunnelSettings
from miragevpn.printable import printable

from ..hooks import CannotAsk
from .policy import Blocked, Connected, Connecting, Endpoint, Policy, Tunnel

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

BACKOFF_FIRST = 1.0  # seconds before the first new session after one ended on an error
BACKOFF_CAP = 30.0  # never wait longer than this between sessions ("reconnect forever")
ANSWER_TIMEOUT = 300.0  # seconds a one-time code is waited for; then held (docs/status.md)


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """Blocked and not trying: the reason needs a person (bad credentials, HALT, no profile).
    Left only by a profile change (QubesDB watch) or a restart of the daemon."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    """Blocked between attempts: starting, reconnecting after a loss, switching profiles."""

    reason: str
    retry_in: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Asking:
    """Blocked: the session waits for a one-time code (`qubes-miragevpn answer CODE`)."""

    text: str  # the challenge, as the server or the profile words it
    dynamic: bool  # the server asked after the password (CRV1); else static-challenge
    timeout: float = ANSWER_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolving:
    """The daemon's marked sockets ask the uplink DNS servers for the server's address."""

    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialing:
    """The daemon's marked socket is about to reach `endpoint` (policy Connecting)."""

    endpoint: Endpoint
    resolve_via_uplink_dns: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Up:
    """The tunnel is established: AppVM traffic goes through `tunnel.device` only."""

    tunnel: Tunnel
    summary: str  # the tunnel in words, for the status line


Phase: TypeAlias = Held | Waiting | Asking | Resolving | Dialing | Up


def policy_for(phase: Phase) -> Policy:
    """The firewall policy of a phase: only Dialing and Up open anything, and only that."""
    match phase:
        case Resolving():
            return Connecting(endpoints=(), resolve_via_uplink_dns=True)
        case Dialing(endpoint=endpoint, resolve_via_uplink_dns=resolve):
            return Connecting(endpoints=(endpoint,), resolve_via_uplink_dns=resolve)
        case Up(tunnel=tunnel):
            return Connected(tunnel=tunnel)
        case Held() | Waiting() | Asking():
            return Blocked()


def status_line(phase: Phase) -> str:
    """What `systemctl status` shows (sd_notify STATUS=), in words."""
    match phase:
        case Held(reason=reason):
            return f"blocked: {reason} (fix it, then change the profile or restart)"
        case Waiting(reason=reason, retry_in=retry_in):
            if retry_in > 0:
                return f"blocked: {reason}; reconnecting in {retry_in:.0f}s"
            return f"blocked: {reason}"
        case Asking(text=text, timeout=timeout):
            return (
                f"waiting for a one-time code: {printable(text)} (blocked; give it with "
                f"`qubes-miragevpn answer CODE` within {timeout:.0f}s)"
            )
        case Resolving(hosts=hosts):
            return f"resolving {', '.join(hosts)} through the uplink (blocked)"
        case Dialing(endpoint=e):
            return f"connecting to {e.address} port {e.port} over {e.proto.upper()} (blocked)"
        case Up(summary=summary):
            return f"connected: {summary}"


# --------------------------------------------------------------------------- hook inputs


def endpoint_of(address: IPAddress, port: int, transport: Transport) -> Endpoint:
    """The policy's endpoint for the session loop's (address, port, transport)."""
    return Endpoint(
        address=address, port=port, proto="udp" if transport is Transport.UDP else "tcp"
    )


def tunnel_dns(
    settings: TunnelSettings, configured: Sequence[IPAddress] = ()
) -> tuple[IPAddress, ...]:
    """The resolvers the AppVMs' DNS goes to: `settings.yaml`'s when set, else the pushed
    `dhcp-option DNS`/`DNS6` ones (the engine validated them: unicast, no scope), in order."""
    if configured:
        return tuple(dict.fromkeys(configured))
    found: list[IPAddress] = []
    for option in settings.dhcp_options:
        if option.kind.upper() not in ("DNS", "DNS6") or not option.value:
            continue
        try:
            address = ipaddress.ip_address(option.value)
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return tuple(found)


def tunnel_of(
    settings: TunnelSettings,
    *,
    device: str,
    endpoint: Endpoint,
    configured_dns: Sequence[IPAddress] = (),
) -> Tunnel:
    """The policy's view of an established tunnel."""
    return Tunnel(
        device=device,
        mtu=settings.mtu,
        ipv6=settings.ipv6 is not None,
        dns=tunnel_dns(settings, configured_dns),
        endpoint=endpoint,
    )


def dns_warning(tunnel: Tunnel) -> str | None:
    """The status line's warning when the AppVMs get no DNS through this tunnel."""
    if tunnel.dns4:
        return None
    if tunnel.dns:
        return "the VPN gave only IPv6 DNS servers: AppVM DNS (Qubes' IPv4 addresses) is refused"
    return (
        "the VPN pushed no DNS server and settings.yaml sets none: AppVM DNS is refused "
        "(set `dns:` in settings.yaml)"
    )


# --------------------------------------------------------------------------- session ends


class EndKind(enum.Enum):
    """Why a session ended, as far as the daemon's next step is concerned."""

    STOPPED = "stopped"  # we closed it (stop request, profile switch)
    HALTED = "halted"  # the server sent HALT: stay blocked
    AUTH_FAILED = "authentication failed"  # AUTH_FAILED (not TEMP): stay blocked
    UNUSABLE = "profile unusable"  # the profile cannot be used as it is: stay blocked
    NO_CODE = "no one-time code"  # nobody answered the code's question in time: stay blocked
    TRANSIENT = "transient"  # anything else: retry after the back-off


HOLDING_KINDS = frozenset({EndKind.HALTED, EndKind.AUTH_FAILED, EndKind.UNUSABLE, EndKind.NO_CODE})


class CodeNotGiven(CannotAsk):
    """No one-time code within the answer window: the session ends and the daemon holds
    (asking again by itself would send the server a new login, and maybe the user's phone a
    new push, every few minutes, for nobody)."""


def classify_end(
    *, ending: str, reason: str, error: BaseException | None, closed_by_us: bool = False
) -> EndKind:
    """Classify a session's end from `SessionOutcome` (ending value, reason, error);
    `closed_by_us`: the daemon asked the loop to close (stop request, profile switch).

    The engine ends a session for good on AUTH_FAILED (`AuthFailed`, not `temporary`), on
    HALT (`RemoteProtocolError`, "server halted"), on a configuration it refuses
    (`ConfigError`), after ping-exit or when its retries are exhausted; the loop itself ends
    with "setup failed" when a hook raised (firewall, tun device); the daemon ends it when no
    one-time code came in time (`CodeNotGiven`). Only these four need a person; everything
    else is retried (ping-exit and exhausted retries: "reconnect forever")."""
    from miragevpn.errors import AuthFailed, ConfigError

    if closed_by_us and ending == "closed":
        return EndKind.STOPPED
    if isinstance(error, ConfigError):
        return EndKind.UNUSABLE
    if isinstance(error, CodeNotGiven):
        return EndKind.NO_CODE
    if isinstance(error, AuthFailed):
        return EndKind.TRANSIENT if error.temporary else EndKind.AUTH_FAILED
    if "halted" in f"{reason} {error or ''}".lower():
        return EndKind.HALTED
    return EndKind.TRANSIENT


def backoff(failures: int) -> float:
    """Seconds before the next session after `failures` sessions in a row ended on an error
    without ever reaching the tunnel: 1, 2, 4, ... capped at BACKOFF_CAP."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * float(2 ** min(failures - 1, 16)))


def after_end(kind: EndKind, reason: str, failures: int) -> Phase:
    """The phase after a session ended (`failures` counts this one)."""
    if kind in HOLDING_KINDS:
        return Held(reason=f"{kind.value}: {reason}" if kind.value not in reason else reason)
    if kind is EndKind.STOPPED:
        return Waiting(reason=reason)
    return Waiting(reason=f"session ended: {reason}", retry_in=backoff(failures))
