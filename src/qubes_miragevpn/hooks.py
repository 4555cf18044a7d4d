"""What a `SessionLoop` and its application say to each other: the hooks and their values.

`SessionHooks` is what an application fills in (the unix client, the Qubes gateway); the
loop calls it at each step the application decides. `SessionState` is where the session is
now, for a status line or a status socket (`describe.describe_state` says it in words).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from miragevpn.config.model import Transport
from miragevpn.events import ChallengeRequested, ProxyRoute, TunnelSettings

from .tun import TunDevice

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """Where the next connection attempt goes: the socket's peer. With a proxy (`via`), that is
    the proxy (what a firewall must let through), and `via` names the server behind it."""

    address: IPAddress
    port: int
    transport: Transport
    via: ProxyRoute | None = None


class Ending(enum.Enum):
    """How a session ended."""

    CLOSED = "closed"  # close() was called, or the engine ended without an error
    FAILED = "failed"  # the engine ended on an error: auth failed, server HALT, retries over
    SETUP_FAILED = "setup failed"  # a hook raised: tun device, routes, firewall


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOutcome:
    ending: Ending
    reason: str
    error: BaseException | None = None


class SessionHooks(Protocol):
    """What the application decides. Called on the loop, one at a time, in event order."""

    async def before_connect(self, endpoint: Endpoint) -> None:
        """Awaited before the socket to `endpoint` is opened; raise to refuse (ends the
        session with SETUP_FAILED)."""
        ...

    async def tunnel_up(self, settings: TunnelSettings) -> TunDevice:
        """The tunnel is (again) established with `settings`: open or keep the tun device,
        apply what should be applied, and return the device for the loop to pump. Raise if
        nothing usable could be set up (ends the session with SETUP_FAILED)."""
        ...

    def restarting(self, reason: str, retry_in: float) -> None:
        """The session was lost and is retried in `retry_in` seconds (the tun stays)."""
        ...

    def progress(self, message: str) -> None:
        """A step of the connection, in words ("TLS handshake", "pulling options")."""
        ...

    def ended(self, outcome: SessionOutcome) -> None:
        """Called once, just before `run()` returns `outcome`."""
        ...

    async def answer_challenge(self, challenge: ChallengeRequested) -> str:
        """A one-time code is needed: return it (never log it). Not serialized with the other
        hooks, and cancelled when the session ends (close() while asking); raise
        `CannotAsk` when there is no one to ask (the session ends, FAILED, with its words)."""
        ...


class CannotAsk(Exception):
    """The application has no way to ask for a one-time code (no terminal, ...)."""


class Phase(enum.Enum):
    """Where a session is (the `.value` is said in words)."""

    STARTING = "starting"
    RESOLVING = "resolving the server's name"
    CONNECTING = "connecting"
    NEGOTIATING = "connected, negotiating"  # transport open: TLS, authentication, options
    ASKING = "waiting for a one-time code"  # detail: the challenge text
    UP = "tunnel up"
    RESTARTING = "reconnecting"
    CLOSING = "closing"
    ENDED = "ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    phase: Phase
    since: float  # the loop's clock (monotonic) when this phase began
    endpoint: Endpoint | None = None  # the current (or last) server endpoint
    settings: TunnelSettings | None = None  # the last tunnel settings (kept while restarting)
    detail: str = ""  # the last progress message, the restart reason, or how it ended
