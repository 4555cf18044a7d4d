"""What a control message from the server does to the session (reference §5, §7; OpenVPN
push.c: process_incoming_push_msg, ssl.c/forward.c: the AUTH_FAILED, RESTART, HALT, EXIT
handlers).

Pure: `react(text, state, ...)` reads the message (messages.py) and the state and returns
the client's reactions, in order, as values; it changes nothing. The client (client.py:
`_apply`) carries them out:

    PUSH_REPLY  while Pulling: CollectPushReply (the client owns the assembler); the complete
                reply goes through `push_reply` → Tunnel (data channel parameters, settings),
                UseAuthToken, progress notes; a broken or unusable reply: Restart / Stop.
                When Established (after renegotiation): only UseAuthToken.
    AUTH_FAILED ForgetAuthToken; then, as OpenVPN's receive_auth_failed: TEMP[backoff N,
                advance ...] → Restart after at least N s (no advance by default); CRV1:...
                (a dynamic challenge, challenge.py) → AskChallenge, whatever auth-retry says
                (OpenVPN's console client would need auth-retry interact); after an
                auth-token → Restart at once with the password; `auth-retry nointeract` or
                `interact` → Restart; otherwise Stop (error: `AuthFailed`, the server's reason)
    AUTH_PENDING ExtendHandWindow by its timeout (capped by messages.py); progress
    RESTART     Restart ([N]: the next remote; without [P] ForgetAuthToken first)
    HALT        Stop;  EXIT → Restart
    INFO, other reported as ControlMessageReceived

Also here, in words: `connection_lost_reason` (what a lost transport most likely means in each
phase) and `with_authentication_hint` (a handshake timeout after packets failed tls-auth).
"""

from __future__ import annotations

from dataclasses import dataclass

from .challenge import DYNAMIC_PREFIX, Challenge, parse_dynamic_challenge
from .cipherchoice import choose_data_cipher
from .clientstate import Established, Handshaking, Pulling, Session, State
from .compression import DecompressionStats, session_decompression
from .config.model import AuthRetry, Config, Secret
from .datakeys import DataChannelParams
from .errors import (
    AuthFailed as AuthFailedError,
)
from .errors import (
    DecodeError,
    MirageVPNError,
    RemoteProtocolError,
)
from .events import ControlMessageReceived, ProgressReported, TunnelSettings
from .messages import (
    AuthFailed,
    AuthPending,
    Exit,
    Halt,
    Info,
    PushReply,
    Restart,
    Unrecognised,
    parse_control_message,
)
from .push import PushedOptions, parse_pushed_options
from .remotes import Advance
from .tls_wrap import authentication_failure_hint
from .tunnelsettings import resolve_tunnel_settings

__all__ = [
    "AskChallenge",
    "CollectPushReply",
    "ExtendHandWindow",
    "ForgetAuthToken",
    "Reaction",
    "RestartSession",
    "StopSession",
    "Tunnel",
    "UseAuthToken",
    "connection_lost_reason",
    "push_reply",
    "react",
    "with_authentication_hint",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartSession:
    """Lose this attempt or session and try again (the client's `_fail`)."""

    reason: str
    advance: Advance = Advance.ADDRESS
    backoff: float = 0.0  # the server's `AUTH_FAILED,TEMP[backoff N]`: wait at least this long


@dataclass(frozen=True, slots=True, kw_only=True)
class StopSession:
    """End for good (the client's `_end`)."""

    reason: str
    error: MirageVPNError


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectPushReply:
    """One part of a PUSH_REPLY while pulling: add it to the Pulling state's assembler and,
    once complete, take the reactions of `push_reply`."""

    part: PushReply


@dataclass(frozen=True, slots=True, kw_only=True)
class Tunnel:
    """The PUSH_REPLY is complete and usable: start the data keys, move to Established."""

    params: DataChannelParams
    pushed: PushedOptions
    settings: TunnelSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendHandWindow:
    """AUTH_PENDING: keep pulling until at least `until` (hand-window otherwise)."""

    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UseAuthToken:
    """The server pushed auth-token / auth-token-user: later key states send them."""

    token: Secret | None
    user: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetAuthToken:
    """The auth-token is no longer good: later key states send the configured password."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AskChallenge:
    """The server asks for a one-time code (CRV1): leave this attempt, ask, then reconnect to
    the same address with the answer."""

    challenge: Challenge


Reaction = (
    RestartSession
    | AskChallenge
    | StopSession
    | CollectPushReply
    | Tunnel
    | ExtendHandWindow
    | UseAuthToken
    | ForgetAuthToken
    | ProgressReported
    | ControlMessageReceived
)


def temp_failure(reason: str) -> tuple[float, Advance]:
    """(backoff, advance) of `AUTH_FAILED,TEMP[backoff N,advance no|addr|remote]:text`, as
    OpenVPN's parse_auth_failed_temp: no advance unless a flag says otherwise."""
    backoff, advance = 0.0, Advance.NO
    rest = reason[len("TEMP") :]
    end = rest.find("]")
    if not rest.startswith("[") or end < 0:
        return backoff, advance
    for flag in rest[1:end].split(","):
        name, _, value = flag.strip().partition(" ")
        if name == "backoff" and value.isdigit() and value.isascii():
            backoff = float(min(int(value), MAX_SERVER_BACKOFF))
        elif name == "advance" and value in ("no", "addr", "remote"):
            advance = Advance(value)
    return backoff, advance


MAX_SERVER_BACKOFF = 3600  # a server may ask us to wait; an hour at most
DYNAMIC_TLS_CRYPT_NOTE = "renegotiations use a dynamic tls-crypt key (protocol-flags dyn-tls-crypt)"


def react(
    text: str, state: State, *, config: Config, now: float, auth_token_in_use: bool = False
) -> list[Reaction]:
    """The client's reactions to one control message, in order (see the module doc).

    `auth_token_in_use`: the last authentication sent the server's auth-token; an AUTH_FAILED
    then means the token expired, and we try again at once with the password (as OpenVPN)."""
    message = parse_control_message(text)
    match message:
        case PushReply():
            if isinstance(state, Pulling):
                return [CollectPushReply(part=message)]
            if isinstance(state, Established):
                return _late_push_reply(message, config=config)
            return []
        case AuthFailed(reason=reason):
            error = AuthFailedError(reason, temporary=message.temporary)
            if error.temporary:
                backoff, advance = temp_failure(reason)
                restart = RestartSession(reason=str(error), advance=advance, backoff=backoff)
                return [ForgetAuthToken(), restart]
            if reason.startswith(DYNAMIC_PREFIX):
                challenge = parse_dynamic_challenge(reason)
                if challenge is not None:
                    return [ForgetAuthToken(), AskChallenge(challenge=challenge)]
                # its fields are not shown: a malformed request may still hold the state id
                error = AuthFailedError(f"{DYNAMIC_PREFIX}<not shown>")
                why = f"{error}: its one-time code request (CRV1) is malformed"
                return [ForgetAuthToken(), StopSession(reason=why, error=error)]
            if auth_token_in_use:
                why = f"{error}; the auth-token may have expired: trying the password again"
                return [ForgetAuthToken(), RestartSession(reason=why, advance=Advance.NO)]
            if config.auth_retry is not AuthRetry.NONE:  # nointeract; interact (see docs)
                why = f"{error}; trying again (auth-retry {config.auth_retry.value})"
                return [ForgetAuthToken(), RestartSession(reason=why, advance=Advance.NO)]
            return [ForgetAuthToken(), StopSession(reason=str(error), error=error)]
        case AuthPending(timeout=timeout):
            reactions: list[Reaction] = []
            if isinstance(state, Pulling) and timeout is not None:
                reactions.append(ExtendHandWindow(until=now + timeout))
            reactions.append(ProgressReported(message="authentication pending"))
            return reactions
        case Restart(message=why, flags=flags):
            advance = Advance.REMOTE if "N" in flags else Advance.NO
            reason = f"server asked to restart: {why or 'no reason given'}"
            restart = RestartSession(reason=reason, advance=advance)
            return [restart] if "P" in flags else [ForgetAuthToken(), restart]
        case Halt(message=why):
            return [
                StopSession(
                    reason=f"server halted: {why or 'no reason given'}",
                    error=RemoteProtocolError(f"the server halted the session: {why}"),
                )
            ]
        case Exit():
            return [RestartSession(reason="server is exiting (EXIT)")]
        case Info() | Unrecognised():
            return [ControlMessageReceived(message=text)]


def push_reply(
    lines: tuple[str, ...] | list[str],
    session: Session,
    decompression_stats: DecompressionStats | None = None,
    *,
    config: Config,
    tls_ekm: bool,
) -> list[Reaction]:
    """The reactions to a complete PUSH_REPLY (its option lines, continuation joined).
    Decompressed packets are counted in `decompression_stats` (the client's `Stats`)."""
    try:
        pushed = parse_pushed_options(lines, config)
    except (DecodeError, RemoteProtocolError) as exc:
        return [RestartSession(reason=f"unusable PUSH_REPLY: {exc}")]
    choice = choose_data_cipher(
        config, pushed_cipher=pushed.cipher, their_options=session.keys.their_options
    )
    if choice.cipher is None:
        why = choice.refusal or "no data channel cipher"
        return [
            StopSession(
                reason=f"cannot set up the data channel: {why}",
                error=RemoteProtocolError(why),
            )
        ]
    cipher = choice.cipher
    use_ekm = pushed.uses_ekm and tls_ekm
    compression = pushed.compression or config.compression
    decompression, warning = session_decompression(
        compression,
        config.allow_compression,
        tun_mtu=pushed.tun_mtu or config.tun_mtu,
        stats=decompression_stats or DecompressionStats(),
    )
    try:
        params = DataChannelParams.create(
            cipher=cipher,
            compression=compression,
            peer_id=pushed.peer_id,
            replay_window=config.replay_window,
            ekm=use_ekm,
            auth=choice.auth or config.auth,
            decompression=decompression,
            dynamic_tls_crypt=pushed.dynamic_tls_crypt,
        )
    except MirageVPNError as exc:
        return [StopSession(reason=f"cannot set up the data channel: {exc}", error=exc)]
    settings, notes = resolve_tunnel_settings(
        config,
        pushed,
        remote_address=session.address,
        cipher=cipher,
        key_derivation="tls-ekm" if use_ekm else "tls1-prf",
    )
    reactions: list[Reaction] = [ProgressReported(message=note) for note in choice.notes]
    if warning is not None:
        reactions.append(ProgressReported(message=warning))
    if pushed.dynamic_tls_crypt:
        reactions.append(ProgressReported(message=DYNAMIC_TLS_CRYPT_NOTE))
    if config.reneg_sec_min is not None and session.keys.reneg_sec is not None:
        seconds, window = session.keys.reneg_sec, f"{config.reneg_sec:g} {config.reneg_sec_min:g}"
        reactions.append(
            ProgressReported(message=f"keys renegotiated every {seconds:g} s (reneg-sec {window})")
        )
    reactions += [ProgressReported(message=note) for note in notes]
    reactions += [ProgressReported(message=f"pushed option: {note}") for note in pushed.notes]
    reactions += [
        ProgressReported(message=f"pushed option ignored: {ignored.text} ({ignored.reason})")
        for ignored in pushed.ignored
    ]
    reactions.append(Tunnel(params=params, pushed=pushed, settings=settings))
    if pushed.auth_token is not None or pushed.auth_token_user is not None:
        reactions.append(UseAuthToken(token=pushed.auth_token, user=pushed.auth_token_user))
    return reactions


def _late_push_reply(part: PushReply, *, config: Config) -> list[Reaction]:
    """After renegotiation 2.6 pushes a fresh auth-token alone; nothing else changes."""
    try:
        pushed = parse_pushed_options(part.options, config)
    except (DecodeError, RemoteProtocolError):
        return []
    if pushed.auth_token is None and pushed.auth_token_user is None:
        return []
    return [UseAuthToken(token=pushed.auth_token, user=pushed.auth_token_user)]


def with_authentication_hint(reason: str, session: Session, config: Config) -> str:
    """A handshake timeout while nothing from the server authenticated but something failed
    to: say so, and which key to check."""
    failures = session.failed_authentication
    if session.their_session_id is not None or not failures:
        return reason
    hint = authentication_failure_hint(config.tls_protection, failures)
    return f"{reason}: {hint}" if hint else reason


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
    if session.keys.first_handshake_complete:
        return (
            "the connection to the server was closed after the TLS handshake: the server "
            "probably rejected our certificate (its log says why)"
        )
    return "the connection to the server was closed during the TLS handshake"
