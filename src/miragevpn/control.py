"""What a control message from the server does to the session (reference §5, §7; OpenVPN
push.c: process_incoming_push_msg, ssl.c/forward.c: the AUTH_FAILED, RESTART, HALT, EXIT
handlers).

`react(text, state, ...)` is the client's answer to one control message (push.py parses it),
returned as reactions the client applies in order (client.py: `_control_message`):

    PushReply   while Pulling: assemble the parts; the last one gives data keys, the tunnel
                settings and `Tunnel(Established)`; a broken or unusable reply: Restart / Stop.
                When Established (after renegotiation): only a fresh auth-token is taken.
    AUTH_FAILED forgets the auth-token; TEMP → Restart, otherwise Stop
    AUTH_PENDING extends the hand-window by its timeout; progress
    RESTART     Restart ([N]: the next remote; without [P] the auth-token is forgotten)
    HALT        Stop;  EXIT → Restart
    INFO, other reported as ControlMessageReceived

Also here: `connection_lost_reason`, what a lost transport most likely means in each phase.
Side effects are limited to the session's key and credential bookkeeping (`Keying`) and the
Pulling state's own assembler and deadline; state changes are the client's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .clientstate import Established, Handshaking, Pulling, State
from .config.model import Config
from .errors import AuthenticationError, DecodeError, MirageVPNError, RemoteProtocolError
from .events import ControlMessageReceived, ProgressReported
from .keying import Keying
from .push import (
    AuthFailed,
    AuthPending,
    Exit,
    Halt,
    Info,
    PushReply,
    Restart,
    Unrecognised,
    parse_control_message,
    parse_pushed_options,
)
from .remotes import Advance
from .tunnelsettings import resolve_tunnel_settings

__all__ = [
    "Reaction",
    "RestartSession",
    "StopSession",
    "Tunnel",
    "connection_lost_reason",
    "react",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartSession:
    """Lose this attempt or session and try again (the client's `_fail`)."""

    reason: str
    advance: Advance = Advance.ADDRESS


@dataclass(frozen=True, slots=True, kw_only=True)
class StopSession:
    """End for good (the client's `_end`)."""

    reason: str
    error: MirageVPNError


@dataclass(frozen=True, slots=True, kw_only=True)
class Tunnel:
    """The PUSH_REPLY is complete and usable: move to `established`."""

    established: Established


Reaction = RestartSession | StopSession | Tunnel | ProgressReported | ControlMessageReceived


def react(text: str, state: State, *, config: Config, keying: Keying, now: float) -> list[Reaction]:
    """The client's reactions to one control message, in order (see the module doc)."""
    message = parse_control_message(text)
    match message:
        case PushReply():
            if isinstance(state, Pulling):
                return _push_reply(state, message, config=config, keying=keying, now=now)
            if isinstance(state, Established):
                _late_push_reply(message, config=config, keying=keying)
            return []
        case AuthFailed(reason=reason):
            keying.forget_auth_token()
            if message.temporary:
                return [RestartSession(reason=f"temporary authentication failure: {reason}")]
            return [
                StopSession(
                    reason=f"authentication failed: {reason or 'no reason given'}",
                    error=AuthenticationError(f"AUTH_FAILED {reason}".strip()),
                )
            ]
        case AuthPending(timeout=timeout):
            if isinstance(state, Pulling) and timeout is not None:
                state.deadline = max(state.deadline, now + timeout)
            return [ProgressReported(message="authentication pending")]
        case Restart(message=why, flags=flags):
            advance = Advance.REMOTE if "N" in flags else Advance.NO
            if "P" not in flags:
                keying.forget_auth_token()
            reason = f"server asked to restart: {why or 'no reason given'}"
            return [RestartSession(reason=reason, advance=advance)]
        case Halt(message=why):
            return [
                StopSession(
                    reason=f"server halted: {why or 'no reason given'}",
                    error=RemoteProtocolError(f"server halted the session: {why}"),
                )
            ]
        case Exit():
            return [RestartSession(reason="server is exiting (EXIT)")]
        case Info() | Unrecognised():
            return [ControlMessageReceived(message=text)]


def _push_reply(
    state: Pulling, part: PushReply, *, config: Config, keying: Keying, now: float
) -> list[Reaction]:
    try:
        lines = state.assembler.add(part)
        if lines is None:
            return []
        pushed = parse_pushed_options(lines, config)
    except (DecodeError, RemoteProtocolError) as exc:
        return [RestartSession(reason=f"unusable PUSH_REPLY: {exc}")]
    session = state.session
    key_state = session.key_states[0]
    cipher = pushed.cipher or config.data_ciphers_fallback or config.cipher
    if cipher is None:
        return [
            StopSession(
                reason="server pushed no cipher and no data-ciphers-fallback is configured",
                error=RemoteProtocolError("no data channel cipher"),
            )
        ]
    use_ekm = pushed.uses_ekm and keying.tls_ekm
    try:
        data = keying.first_data_keys(
            session,
            key_state,
            cipher=cipher,
            compression=pushed.compression,
            peer_id=pushed.peer_id,
            ekm=use_ekm,
        )
    except ValueError as exc:  # e.g. a pushed peer-id out of range
        reason = f"cannot set up the data channel: {exc}"
        return [StopSession(reason=reason, error=RemoteProtocolError(str(exc)))]
    except MirageVPNError as exc:
        return [StopSession(reason=f"cannot set up the data channel: {exc}", error=exc)]
    keying.apply_auth_token(pushed)
    settings, notes = resolve_tunnel_settings(
        config,
        pushed,
        remote_address=session.address,
        cipher=cipher,
        key_derivation="tls-ekm" if use_ekm else "tls1-prf",
    )
    reactions: list[Reaction] = [ProgressReported(message=note) for note in notes]
    reactions += [
        ProgressReported(message=f"pushed option ignored: {ignored.text} ({ignored.reason})")
        for ignored in pushed.ignored
    ]
    established = Established.from_push(
        config, pushed, session=session, data=data, settings=settings, now=now
    )
    reactions.append(Tunnel(established=established))
    return reactions


def _late_push_reply(part: PushReply, *, config: Config, keying: Keying) -> None:
    """After renegotiation 2.6 pushes a fresh auth-token alone; nothing else changes."""
    try:
        pushed = parse_pushed_options(part.options, config)
    except (DecodeError, RemoteProtocolError):
        return
    keying.apply_auth_token(pushed)


def connection_lost_reason(state: Handshaking | Pulling | Established) -> str:
    """Why the session ended when the transport went away, with what the phase suggests: a
    server that closes right after the TLS handshake has most likely refused our certificate
    (OpenVPN 2.6 closes a TCP connection without sending its TLS alert)."""
    if isinstance(state, Established):
        return "the connection to the server was closed"
    session = state.session
    if isinstance(state, Pulling):
        return "the connection to the server was closed before its PUSH_REPLY"
    if session.their_session_id is None:
        return "the connection to the server was closed before it answered our reset"
    first = session.key_states.get(0)
    if first is not None and first.tls.handshake_complete:
        return (
            "the connection to the server was closed after the TLS handshake: the server "
            "probably rejected our certificate (its log says why)"
        )
    return "the connection to the server was closed during the TLS handshake"
