"""Key state of a client: one owner per session, outcomes instead of flags.

- `Keying` (one per client): the credentials and the pushed auth-token (reference §7.3), the TLS
  settings; it makes sessions (`new_session`): session ids, control-channel wrapping and the
  session's `SessionKeys`. A one-time code (challenge.py) goes with the next session only: the
  static challenge's SCRV1 password or the CRV1 answer is what that session's key states
  send (renegotiations too, as OpenVPN resends its cached password); a later session without
  an auth-token needs a new code (`question`).
- `SessionKeys` (one per session) is the only writer of the session's key states (by key id),
  its data keys and its renegotiation. Its methods say what happened (`KeysReceived`,
  `KeysTimer`, the key id a renegotiation began with); the client turns that into events and
  state moves and never reaches inside.

Renegotiation (reference §8; ssl.c: key_state_soft_reset, tls_select_encryption_key): our
triggers (reneg-sec since the key became active, reneg-bytes, reneg-pkts, replay ids near
exhaustion) or the server's P_CONTROL_SOFT_RESET_V1 for the next key id begin it (the primary
data key becomes the lame duck, a new key state sends its soft reset); when the new key state
has negotiated, its data keys become the primary and we send with them from its start +
min(hand-window, reneg-sec/2); the lame duck dies after tran-window; a renegotiation that does
not finish within hand-window ends the session (the client restarts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from .challenge import (
    Challenge,
    ChallengeKind,
    dynamic_response_password,
    static_response_password,
)
from .clientstate import Session
from .config.model import AuthUserPass, Config, Secret, Transport
from .datakeys import DataChannelParams, DataKeys, derive_key2
from .dyncrypt import (
    DYNAMIC_TLS_CRYPT_LABEL,
    DYNAMIC_TLS_CRYPT_LENGTH,
    SessionWrap,
    dynamic_tls_crypt_key,
)
from .errors import DropReason, LocalProtocolError
from .events import IPAddress, TlsEstablished
from .framing import StreamDecoder
from .keystate import KeyState, client_key_method_2
from .packet import ACK_V1_MAX_ACKS, ControlPacket, Opcode
from .reliable import max_control_payload
from .tls import TlsSession, TlsSettings, build_context
from .tls_wrap import TlsCryptV2Wrap, make_wrap

__all__ = ["Keying", "KeysReceived", "KeysTimer", "SessionKeys", "next_key_id", "reneg_seconds"]

NO_DEADLINE = float("inf")
DUE_NOW = 0.0

MakeKeyState = Callable[[int, Opcode, float], KeyState]
SOFTETHER_MAX_ACKS = 4  # acks per P_ACK_V1 without control-channel wrapping (see _new_key_state)


def reneg_seconds(config: Config, rng: Callable[[int], bytes]) -> float | None:
    """One session's reneg-sec (None: off). `reneg-sec max min` picks max - (r mod (max - min)),
    r random: a whole number of seconds in min+1..max (min..max when min = max); a client
    without min uses max (init.c: do_init_crypto_tls; only a server adds 10% jitter)."""
    most, least = config.reneg_sec, config.reneg_sec_min
    if not most or least is None:
        return most
    span = max(int(most) - int(least), 1)
    return most - int.from_bytes(rng(4), "big") % span


def next_key_id(key_id: int) -> int:
    """The key id of the next renegotiation: 1, 2, ..., 7, then 1 again; 0 belongs to the
    hard reset only (ssl.c: key_state_soft_reset, `session->key_id` wraps to 1)."""
    return key_id % 7 + 1


@dataclass(frozen=True, slots=True)
class KeysReceived:
    """What one control packet did to the session's keys."""

    messages: tuple[str, ...] = ()  # control messages that became readable, in order
    dropped: DropReason | None = None  # counted; with UNKNOWN_KEY_ID nothing else happened
    began: int | None = None  # the server's soft reset began a renegotiation with this key id
    tls: TlsEstablished | None = None  # a TLS handshake completed: what was agreed
    first_negotiated: bool = False  # key id 0 negotiated: time for PUSH_REQUEST
    renegotiated: int | None = None  # a renegotiation finished: the new primary key id


@dataclass(frozen=True, slots=True)
class KeysTimer:
    """What the passing of time did to the session's keys."""

    expired: int | None = None  # the lame duck's key id, dropped after tran-window
    began: int | None = None  # our trigger began a renegotiation with this key id
    timed_out: bool = False  # the renegotiation did not finish within hand-window


@dataclass(frozen=True, slots=True)
class _Renegotiation:
    key_id: int
    deadline: float  # hand-window


class Keying:
    """Credentials and TLS settings of one client; makes its sessions (see the module doc)."""

    def __init__(
        self,
        config: Config,
        *,
        rng: Callable[[int], bytes],
        credentials: AuthUserPass | None,
        tls_ekm: bool,
    ) -> None:
        self._config = config
        self._rng = rng
        self._credentials = credentials
        self.tls_ekm = tls_ekm
        self._auth_token: Secret | None = None
        self._auth_token_user: str | None = None
        self._answer: tuple[str, Secret] | None = None  # for the next session only
        self._tls_settings = TlsSettings.from_config(config)
        build_context(self._tls_settings)  # configuration errors surface now, not at connect

    # ------------------------------------------------------------------ credentials

    def use_auth_token(self, token: Secret | None, user: str | None) -> None:
        """The server pushed `auth-token` / `auth-token-user`: later key states send them."""
        if token is not None:
            self._auth_token = token
        if user is not None:
            self._auth_token_user = user

    def forget_auth_token(self) -> None:
        self._auth_token = None

    def tunnel_authenticated(self) -> bool:
        """The server accepted us (PUSH_REPLY). With `auth-nocache` and an auth-token, the
        password is dropped: the token replaces it from now on. Returns whether it was.

        Without a token it is kept: this client cannot ask again or re-read a file, so
        dropping it would end the next renegotiation (OpenVPN would ask again)."""
        credentials = self._credentials
        if not self._config.auth_nocache or credentials is None or self._auth_token is None:
            return False
        if credentials.password is None:
            return False
        self._credentials = replace(credentials, password=None)
        return True

    @property
    def password_dropped(self) -> bool:
        """auth-nocache dropped the password: an expired token cannot fall back to it."""
        credentials = self._credentials
        return (
            self._config.auth_nocache and credentials is not None and credentials.password is None
        )

    @property
    def token_may_expire(self) -> bool:
        """The next AUTH_FAILED may mean the auth-token expired (a password to fall back to)."""
        return self._auth_token is not None and not self.password_dropped

    def question(self) -> Challenge | None:
        """The static challenge to ask before the next attempt: configured, a password will
        be sent (no auth-token), and not answered yet."""
        challenge = self._config.static_challenge
        if challenge is None or self._credentials is None:
            return None
        if self._auth_token is not None or self._answer is not None:
            return None
        return Challenge(kind=ChallengeKind.STATIC, text=challenge.text, echo=challenge.echo)

    def answer(self, challenge: Challenge, response: str) -> None:
        """The user's code for `challenge`: the next session authenticates with it."""
        code = response.encode("utf-8")
        if challenge.kind is ChallengeKind.DYNAMIC:
            password = dynamic_response_password(challenge.state_id, code)
            self._answer = (challenge.username, Secret(password))
            return
        credentials = self._credentials
        username, plain = "", b""
        if credentials is not None:
            username = credentials.username or ""
            plain = credentials.password.value if credentials.password is not None else b""
        self._answer = (username, Secret(static_response_password(plain, code)))

    def _username_password(
        self, answer: tuple[str, Secret] | None
    ) -> tuple[str | None, bytes | None]:
        credentials = self._credentials
        if credentials is None:
            return None, None
        username = self._auth_token_user or credentials.username or ""
        if self._auth_token is not None:
            return username, self._auth_token.value
        if answer is not None:
            return answer[0], answer[1].value
        password = credentials.password.value if credentials.password is not None else b""
        return username, password

    # ------------------------------------------------------------------ sessions

    def new_session(
        self, address: IPAddress, port: int, transport: Transport, now: float
    ) -> Session:
        """A session with key id 0's key state, its hard reset queued."""
        config = self._config
        wrap = SessionWrap(
            make_wrap(config.tls_protection, config.auth, replay_window=config.replay_window)
        )
        reset = (
            Opcode.P_CONTROL_HARD_RESET_CLIENT_V3
            if isinstance(wrap.configured, TlsCryptV2Wrap)
            else Opcode.P_CONTROL_HARD_RESET_CLIENT_V2
        )
        my_session_id = self._session_id()
        answer, self._answer = self._answer, None

        def make_key_state(key_id: int, opcode: Opcode, started: float) -> KeyState:
            return self._new_key_state(wrap, transport, key_id, opcode, started, answer)

        keys = SessionKeys(
            config,
            make_key_state,
            my_session_id=my_session_id,
            reset=reset,
            now=now,
            rng=self._rng,
            wrap=wrap,
            reneg_sec=reneg_seconds(config, self._rng),
        )
        return Session(
            transport=transport,
            address=address,
            port=port,
            my_session_id=my_session_id,
            wrap=wrap,
            decoder=StreamDecoder() if transport is Transport.TCP else None,
            keys=keys,
            last_received=now,
            last_sent=now,
        )

    def _session_id(self) -> bytes:
        for _ in range(16):
            candidate = self._rng(8)
            if candidate != bytes(8):
                return candidate
        raise LocalProtocolError("rng returned all-zero session ids")

    def _new_key_state(
        self,
        session_wrap: SessionWrap,
        transport: Transport,
        key_id: int,
        reset: Opcode,
        now: float,
        answer: tuple[str, Secret] | None,
    ) -> KeyState:
        """A key state with a fresh TLS session and our key-method-2 message (credentials as
        they are now: a renegotiation sends the auth-token pushed since; else the session's
        one-time answer, else the password), its packets sized for the wrapping of its key id."""
        config = self._config
        wrap = session_wrap.for_key_id(key_id)
        username, password = self._username_password(answer)
        message, source = client_key_method_2(
            config,
            self._rng,
            transport,
            username=username,
            password=password,
            tls_ekm=self.tls_ekm,
        )
        return KeyState(
            key_id=key_id,
            tls=TlsSession(self._tls_settings),
            reset_opcode=reset,
            my_key_method=message,
            key_source=source,
            tls_timeout=config.tls_timeout,
            payload_size=max_control_payload(wrap_overhead=wrap.overhead, ipv6=True),
            wkc_overhead=wrap.wkc_overhead if isinstance(wrap, TlsCryptV2Wrap) else 0,
            started=now,
            # Without tls-auth/tls-crypt, OpenVPN 2.6 puts at most 4 acks in a P_ACK_V1 (ssl_pkt.c:
            # write_control_auth, for SoftEther, which refuses ack packets with more and then
            # drops the session over the PUSH_REPLY it believes unacknowledged)
            ack_packet_max_acks=(
                SOFTETHER_MAX_ACKS if config.tls_protection is None else ACK_V1_MAX_ACKS
            ),
        )


class SessionKeys:
    """The key states, data keys and renegotiation of one session (see the module doc)."""

    def __init__(
        self,
        config: Config,
        make_key_state: MakeKeyState,
        *,
        my_session_id: bytes,
        reset: Opcode,
        now: float,
        wrap: SessionWrap,
        reneg_sec: float | None,
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        """`reneg_sec`: this session's (`reneg_seconds`); `wrap`: the session's wrapping,
        which gets the dynamic tls-crypt key when the PUSH_REPLY asks for it."""
        self._config = config
        self._rng = rng  # CBC data keys' per-packet IVs
        self._wrap = wrap
        self.reneg_sec = reneg_sec
        self._make_key_state = make_key_state
        self._my_session_id = my_session_id
        # at most the primary key state and the lame duck (ssl_common.h: KS_PRIMARY,
        # KS_LAME_DUCK), by key id
        self._states: dict[int, KeyState] = {0: make_key_state(0, reset, now)}
        self.data: DataKeys | None = None  # from the PUSH_REPLY on (`start_data`)
        self._primary_key_id = 0
        self._active_since = now  # when the primary became active: reneg-sec counts from here
        self._renegotiation: _Renegotiation | None = None

    # ------------------------------------------------------------------ queries

    def key_states(self) -> Iterator[KeyState]:
        return iter(self._states.values())

    @property
    def first_handshake_complete(self) -> bool:
        """Key id 0's TLS handshake completed (the server accepted the TLS session so far)."""
        first = self._states.get(0)
        return first is not None and first.tls.handshake_complete

    def primary(self) -> KeyState:
        """The key state control messages go on: the newest negotiated one (else key id 0)."""
        negotiated = [k for k in self._states.values() if k.is_negotiated]
        if not negotiated:
            return self._states[min(self._states)]
        return max(negotiated, key=lambda k: k.started)

    def control_deadline(self) -> float | None:
        """The earliest retransmission or ack of any key state."""
        deadlines = [k.reliable.next_deadline() for k in self._states.values()]
        due = [d for d in deadlines if d is not None]
        return min(due) if due else None

    def data_deadline(self) -> float | None:
        """Once data keys exist: the send switch, the lame duck's death, the renegotiation's
        hand-window, our own renegotiation triggers (`handle_timer` acts on each)."""
        if self.data is None:
            return None
        deadlines = [self.data.next_deadline()]
        if self._renegotiation is not None:
            deadlines.append(self._renegotiation.deadline)
        else:
            deadlines.append(self._renegotiation_trigger())
        due = [d for d in deadlines if d is not None and d != NO_DEADLINE]
        return min(due) if due else None

    # ------------------------------------------------------------------ control channel

    def receive(
        self,
        packet: ControlPacket,
        now: float,
        *,
        their_session_id: bytes,
        may_renegotiate: bool,
    ) -> KeysReceived:
        """One control packet of this session (session ids checked by the caller). The
        server's soft reset for the next key id begins a renegotiation if `may_renegotiate`
        and none is under way. Raises what `KeyState.receive` raises, and MirageVPNError if
        a renegotiated key state's data keys cannot be made."""
        began: int | None = None
        key_state = self._states.get(packet.key_id)
        if key_state is None:
            if not (
                may_renegotiate
                and packet.opcode is Opcode.P_CONTROL_SOFT_RESET_V1
                and packet.key_id == next_key_id(self._primary_key_id)
                and self.data is not None
                and self._renegotiation is None
            ):
                return KeysReceived(dropped=DropReason.UNKNOWN_KEY_ID)
            key_state = self._begin(packet.key_id, now)
            began = packet.key_id
        dropped = None
        if packet.sequence_number is not None:  # its acks still count; a duplicate is acked
            dropped = key_state.reliable.drop_reason(packet.sequence_number)
        received = key_state.receive(packet, now)
        tls = None
        if received.tls_completed:
            session = key_state.tls
            tls = TlsEstablished(
                version=session.version, cipher=session.cipher, peer_subject=session.peer_subject
            )
        first, renegotiated = False, None
        if received.negotiated:
            renegotiation = self._renegotiation
            if renegotiation is not None and renegotiation.key_id == key_state.key_id:
                self._finish(key_state, their_session_id, now)
                renegotiated = key_state.key_id
            else:
                first = key_state.key_id == 0 and self.data is None
        return KeysReceived(
            messages=received.messages,
            dropped=dropped,
            began=began,
            tls=tls,
            first_negotiated=first,
            renegotiated=renegotiated,
        )

    @property
    def their_options(self) -> str | None:
        """The server's OCC options string (its key-method-2 message), once negotiated."""
        key_state = self._states.get(self._primary_key_id)
        if key_state is None or not key_state.is_negotiated:
            return None
        return key_state.their_key_method.options

    # ------------------------------------------------------------------ data keys

    def start_data(
        self, params: DataChannelParams, *, their_session_id: bytes, now: float
    ) -> DataKeys:
        """Key id 0's data keys, once the PUSH_REPLY chose cipher and derivation. Raises
        MirageVPNError or ValueError if they cannot be made."""
        if self.data is not None:
            raise LocalProtocolError("data keys started twice")
        first = self._states[0]
        key2 = self._key2(first, params.ekm, their_session_id)
        data = DataKeys(params, 0, key2, rng=self._rng)
        if params.dynamic_tls_crypt:  # ssl.c: with key id 0's data keys, once per session
            ekm = first.tls.export_keying_material(
                DYNAMIC_TLS_CRYPT_LABEL, DYNAMIC_TLS_CRYPT_LENGTH
            )
            key = dynamic_tls_crypt_key(ekm, self._config.tls_protection)
            self._wrap.use_dynamic(key, replay_window=self._config.replay_window)
        self.data = data
        self._active_since = now
        return data

    def _key2(self, key_state: KeyState, ekm: bool, their_session_id: bytes) -> bytes:
        return derive_key2(
            key_state.tls,
            ekm=ekm,
            mine=key_state.key_source,
            theirs=key_state.their_key_method,
            my_session_id=self._my_session_id,
            their_session_id=their_session_id,
        )

    # ------------------------------------------------------------------ renegotiation

    def maybe_renegotiate(self, now: float) -> int | None:
        """Begin a renegotiation if one of our triggers fired: the new key id, or None."""
        if self.data is None or self._renegotiation is not None:
            return None
        if now < self._renegotiation_trigger():
            return None
        key_id = next_key_id(self._primary_key_id)
        self._begin(key_id, now)
        return key_id

    def handle_timer(self, now: float) -> KeysTimer:
        """The renegotiation's hand-window, the send switch, the lame duck's death, our
        renegotiation triggers."""
        renegotiation = self._renegotiation
        if renegotiation is not None and now >= renegotiation.deadline:
            return KeysTimer(timed_out=True)
        expired = None
        if self.data is not None:
            expired = self.data.handle_timer(now)
            if expired is not None:
                self._states.pop(expired, None)
        return KeysTimer(expired=expired, began=self.maybe_renegotiate(now))

    def _renegotiation_trigger(self) -> float:
        """When our own triggers fire (reference §8): reneg-sec after the key became active,
        or DUE_NOW once reneg-bytes / reneg-pkts (both directions, payload bytes) or the
        replay-id limit is reached."""
        config = self._config
        key = self.data.primary if self.data is not None else None
        if key is not None:
            if key.should_renegotiate:
                return DUE_NOW
            if config.reneg_bytes and key.bytes_sent + key.bytes_received >= config.reneg_bytes:
                return DUE_NOW
            packets = key.packets_sent + key.packets_received
            if config.reneg_pkts and packets >= config.reneg_pkts:
                return DUE_NOW
        if self.reneg_sec:
            return self._active_since + self.reneg_sec
        return NO_DEADLINE

    def _begin(self, key_id: int, now: float) -> KeyState:
        """A soft reset: the primary becomes the lame duck (the previous lame duck goes), a new
        key state sends its own P_CONTROL_SOFT_RESET_V1."""
        assert self.data is not None
        primary = self._states[self._primary_key_id]
        self.data.retire(now + self._config.tran_window)
        key_state = self._make_key_state(key_id, Opcode.P_CONTROL_SOFT_RESET_V1, now)
        self._states = {primary.key_id: primary, key_id: key_state}
        self._renegotiation = _Renegotiation(key_id, now + self._config.hand_window)
        return key_state

    def _finish(self, key_state: KeyState, their_session_id: bytes, now: float) -> None:
        """The new key state negotiated: its data keys become the primary."""
        assert self.data is not None
        try:
            key2 = self._key2(key_state, self.data.params.ekm, their_session_id)
            window = self._config.hand_window  # ssl.c: auth_deferred_expire_window
            if self.reneg_sec:
                window = min(window, self.reneg_sec / 2)
            self.data.install(key_state.key_id, key2, send_from=key_state.started + window, now=now)
        except ValueError as exc:
            raise LocalProtocolError(f"renegotiated data keys unusable: {exc}") from exc
        self._primary_key_id = key_state.key_id
        self._active_since = now
        self._renegotiation = None
