"""The client's states and per-session data: the table half of the state machine in client.py.

States (per-state data in per-state dataclasses; `TRANSITIONS` lists the legal moves):

    Resolving ─resolved─▶ Connecting ─connected─▶ Handshaking ─key-method-2─▶ Pulling
        ▲                      │ failed/timeout        │ hand-window, TLS error,     │ PUSH_REPLY
        │                      │                       │ transport lost...           │
        └──────── Waiting ◀────┴───────────────────────┴─────────────────────────────┤
                     ▲                                                          Established
                     └── ping-restart, RESTART, EXIT, transport lost, TCP error ◀───┘
    any ─close()/HALT/AUTH_FAILED/ping-exit/retries exhausted─▶ Closing ─▶ Ended

    Asking: a one-time code is needed (challenge.py): before an attempt (static-challenge,
    from Waiting) or after the server's CRV1 (from a session); no deadline; the answer starts
    the attempt (Resolving or Connecting).

Within Established, renegotiation (reference §8) keeps the state: the session's `SessionKeys`
(keying.py) owns the key states, the data keys and the renegotiation; the states here only hold
a reference to them (`Established.data` is the same `DataKeys`, read on the fast path).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .challenge import Challenge
from .compression import DecompressionStats
from .config.model import Config, Transport
from .datakeys import DataKeys
from .dyncrypt import SessionWrap
from .errors import DropReason
from .events import IPAddress, TunnelSettings
from .framing import StreamDecoder
from .messages import PushReplyAssembler
from .packet import ControlPacket, Opcode
from .push import PushedOptions

if TYPE_CHECKING:
    from .keying import SessionKeys


@dataclass(slots=True)
class Stats:
    """Counters for status pages and tests (monotonic over the client's life)."""

    packets_received: int = 0  # every wire packet (UDP datagram, TCP frame), data included
    packets_sent: int = 0  # likewise: control, acks, pings and tunnel data
    bytes_received: int = 0  # their bytes (without the TCP length prefix)
    bytes_sent: int = 0
    tunnel_packets_in: int = 0  # decrypted, handed to tun
    tunnel_packets_out: int = 0  # encrypted from tun
    pings_sent: int = 0
    pings_received: int = 0
    restarts: int = 0
    renegotiations: int = 0  # key states negotiated after the first (key id > 0)
    dropped: collections.Counter[DropReason] = field(default_factory=collections.Counter)
    decompression: DecompressionStats = field(default_factory=DecompressionStats)

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason] += 1


@dataclass(slots=True)
class Session:
    """One connection to one server address: ids, wrapping, its keys, link timers."""

    transport: Transport
    address: IPAddress
    port: int
    my_session_id: bytes
    wrap: SessionWrap  # by key id: configured, or dynamic tls-crypt for renegotiations
    decoder: StreamDecoder | None  # TCP only
    keys: SessionKeys  # key states, data keys, renegotiation: their one owner
    their_session_id: bytes | None = None  # learnt from the server's reset
    last_received: float = 0.0
    last_sent: float = 0.0
    text_out: list[bytes] = field(default_factory=list)
    failed_authentication: int = 0  # control packets whose tls-auth/tls-crypt tag failed

    def check_ids(self, packet: ControlPacket) -> DropReason | None:
        """Learn the server's session id from its reset; why `packet` belongs to another
        session (dropped), or None."""
        if packet.opcode is Opcode.P_CONTROL_HARD_RESET_SERVER_V2 and self.their_session_id is None:
            self.their_session_id = packet.session_id
        if self.their_session_id is None or packet.session_id != self.their_session_id:
            return DropReason.FOREIGN_SESSION_ID
        if packet.acks and packet.remote_session_id != self.my_session_id:
            return DropReason.BAD_REMOTE_SESSION_ID
        return None


@dataclass(slots=True)
class Resolving:
    pass


@dataclass(slots=True)
class Connecting:
    address: IPAddress
    deadline: float  # connect-timeout


@dataclass(slots=True)
class Handshaking:
    session: Session
    deadline: float  # hand-window
    poll_deadline: float | None  # server-poll-timeout until the server's reset arrives


@dataclass(slots=True)
class Pulling:
    session: Session
    deadline: float  # hand-window (AUTH_PENDING may extend it)
    next_push_request: float
    assembler: PushReplyAssembler


@dataclass(slots=True)
class Established:
    session: Session
    data: DataKeys  # session.keys.data, read on the fast path (written only by SessionKeys)
    pushed: PushedOptions
    settings: TunnelSettings
    ping: float | None
    ping_restart: float | None
    ping_exit: float | None
    cc_exit: bool
    exit_notify: int

    @classmethod
    def from_push(
        cls,
        config: Config,
        pushed: PushedOptions,
        *,
        session: Session,
        data: DataKeys,
        settings: TunnelSettings,
    ) -> Established:
        """Pushed link timers override configured ones; 0 means off."""
        ping = pushed.ping if pushed.ping is not None else config.ping
        return cls(
            session=session,
            data=data,
            pushed=pushed,
            settings=settings,
            ping=ping or None,
            ping_restart=(pushed.ping_restart or config.ping_restart) or None,
            ping_exit=(pushed.ping_exit or config.ping_exit) or None,
            cc_exit=pushed.cc_exit,
            exit_notify=pushed.explicit_exit_notify or config.explicit_exit_notify,
        )


@dataclass(slots=True)
class Closing:
    session: Session
    data: DataKeys | None  # None: nothing more to send on the data channel
    deadline: float
    next_occ_exit: float | None  # explicit-exit-notify: the next OCC_EXIT (UDP)
    reason: str


@dataclass(slots=True)
class Waiting:
    until: float


@dataclass(slots=True)
class Asking:
    challenge: Challenge


@dataclass(slots=True)
class Ended:
    pass


State = (
    Resolving
    | Connecting
    | Handshaking
    | Pulling
    | Established
    | Closing
    | Waiting
    | Asking
    | Ended
)

TRANSITIONS: dict[type, frozenset[type]] = {
    Resolving: frozenset({Connecting, Waiting, Ended}),
    Connecting: frozenset({Handshaking, Waiting, Ended}),
    Handshaking: frozenset({Pulling, Waiting, Asking, Ended}),
    Pulling: frozenset({Established, Waiting, Asking, Ended, Pulling}),
    Established: frozenset({Waiting, Asking, Closing, Ended}),
    Closing: frozenset({Ended}),
    Waiting: frozenset({Resolving, Connecting, Asking, Ended}),
    Asking: frozenset({Resolving, Connecting, Ended}),
    Ended: frozenset(),
}


OCC_EXIT_INTERVAL = 1.0  # §6.8: one OCC_EXIT per second


def due_data_packets(state: Established | Closing, now: float, stats: Stats) -> list[bytes]:
    """The keepalive ping (Established) or the next OCC_EXIT (Closing) if it is due."""
    packet: bytes | None = None
    if isinstance(state, Established):
        if state.ping and now >= state.session.last_sent + state.ping:
            packet = state.data.encrypt_ping()
            stats.pings_sent += packet is not None
    elif state.data is not None and state.next_occ_exit is not None and now >= state.next_occ_exit:
        packet = state.data.encrypt_occ_exit()
        state.next_occ_exit = now + OCC_EXIT_INTERVAL
    return [] if packet is None else [packet]


def next_deadline(state: State) -> float | None:
    """The state's earliest deadline (the client's `get_timer`): its own timers, and its
    session's retransmissions and key timers (`SessionKeys`)."""
    deadlines: list[float] = []
    if isinstance(state, Waiting):
        return state.until
    if isinstance(state, Connecting):
        return state.deadline
    if isinstance(state, Handshaking):
        deadlines.append(state.deadline)
        if state.poll_deadline is not None:
            deadlines.append(state.poll_deadline)
    elif isinstance(state, Pulling):
        deadlines += [state.deadline, state.next_push_request]
    elif isinstance(state, Established):
        session = state.session
        if state.ping:
            deadlines.append(session.last_sent + state.ping)
        if state.ping_restart:
            deadlines.append(session.last_received + state.ping_restart)
        if state.ping_exit:
            deadlines.append(session.last_received + state.ping_exit)
        keys = session.keys.data_deadline()
        if keys is not None:
            deadlines.append(keys)
    elif isinstance(state, Closing):
        deadlines.append(state.deadline)
        if state.next_occ_exit is not None:
            deadlines.append(state.next_occ_exit)
    else:
        return None
    control = state.session.keys.control_deadline()
    if control is not None:
        deadlines.append(control)
    return min(deadlines)
