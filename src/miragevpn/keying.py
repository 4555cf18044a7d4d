"""Key-state management: making sessions and key states, their data keys, and rotating them.

The client's state machine (client.py) decides *when*; this module knows *how*:

- `new_session` / `new_key_state`: session ids, control-channel wrapping, a key state with a
  fresh TLS session and our key-method-2 message (credentials, or the pushed auth-token as the
  password, reference §7.3).
- `first_data_keys`: the data keys of key id 0 once the PUSH_REPLY chose cipher and derivation.
- Renegotiation (reference §8; ssl.c: key_state_soft_reset, tls_select_encryption_key):
  `renegotiation_deadline` (our triggers), `begin_renegotiation` (primary → lame duck, a new key
  state with the next key id), `finish_renegotiation` (install its data keys, sending on them
  from start + min(hand-window, reneg-sec/2)), `expire_lame_duck` (tran-window).
"""

from __future__ import annotations

from collections.abc import Callable

from .clientstate import Established, Renegotiation, Session
from .config.model import AuthUserPass, Compression, Config, Secret, Transport
from .datakeys import DataChannelParams, DataKeys, derive_key2
from .errors import LocalProtocolError
from .events import IPAddress
from .framing import StreamDecoder
from .keystate import KeyState, client_key_method_2
from .packet import Opcode
from .push import PushedOptions
from .reliable import max_control_payload
from .tls import TlsSession, TlsSettings, build_context
from .tls_wrap import TlsCryptV2Wrap, make_wrap

NO_DEADLINE = float("inf")
DUE_NOW = 0.0


class Keying:
    """Sessions and key states of one client (see the module doc)."""

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
        self._tls_settings = TlsSettings.from_config(config)
        build_context(self._tls_settings)  # configuration errors surface now, not at connect

    # ------------------------------------------------------------------ credentials

    def apply_auth_token(self, pushed: PushedOptions) -> None:
        if pushed.auth_token is not None:
            self._auth_token = pushed.auth_token
        if pushed.auth_token_user is not None:
            self._auth_token_user = pushed.auth_token_user

    def forget_auth_token(self) -> None:
        self._auth_token = None

    def _username_password(self) -> tuple[str | None, bytes | None]:
        credentials = self._credentials
        if credentials is None:
            return None, None
        username = self._auth_token_user or credentials.username or ""
        if self._auth_token is not None:
            return username, self._auth_token.value
        password = credentials.password.value if credentials.password is not None else b""
        return username, password

    # ------------------------------------------------------------------ set-up

    def new_session(
        self, address: IPAddress, port: int, transport: Transport, now: float
    ) -> Session:
        config = self._config
        wrap = make_wrap(config.tls_protection, config.auth, replay_window=config.replay_window)
        session = Session(
            transport=transport,
            address=address,
            port=port,
            my_session_id=self._session_id(),
            wrap=wrap,
            decoder=StreamDecoder() if transport is Transport.TCP else None,
            key_states={},
            last_received=now,
            last_sent=now,
        )
        reset = (
            Opcode.P_CONTROL_HARD_RESET_CLIENT_V3
            if isinstance(wrap, TlsCryptV2Wrap)
            else Opcode.P_CONTROL_HARD_RESET_CLIENT_V2
        )
        session.key_states[0] = self.new_key_state(session, 0, reset, now)
        return session

    def _session_id(self) -> bytes:
        for _ in range(16):
            candidate = self._rng(8)
            if candidate != bytes(8):
                return candidate
        raise LocalProtocolError("rng returned all-zero session ids")

    def new_key_state(self, session: Session, key_id: int, reset: Opcode, now: float) -> KeyState:
        config = self._config
        wrap = session.wrap
        username, password = self._username_password()
        message, source = client_key_method_2(
            config,
            self._rng,
            session.transport,
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
        )

    @staticmethod
    def primary(session: Session) -> KeyState:
        """The key state control messages go on: the newest negotiated one (else key id 0)."""
        negotiated = [k for k in session.key_states.values() if k.negotiated]
        if not negotiated:
            return session.key_states[0]
        return max(negotiated, key=lambda k: k.started)

    # ------------------------------------------------------------------ data keys

    @staticmethod
    def key2(session: Session, key_state: KeyState, ekm: bool) -> bytes:
        return derive_key2(
            key_state.tls,
            ekm=ekm,
            mine=key_state.key_source,
            theirs=key_state.their_key_method,
            my_session_id=session.my_session_id,
            their_session_id=session.their_session_id or b"",
        )

    def first_data_keys(
        self,
        session: Session,
        key_state: KeyState,
        *,
        cipher: str,
        compression: Compression | None,
        peer_id: int | None,
        ekm: bool,
    ) -> DataKeys:
        """Raises MirageVPNError (cipher, derivation) or ValueError (a pushed value)."""
        params = DataChannelParams.create(
            cipher=cipher,
            compression=compression or self._config.compression,
            peer_id=peer_id,
            replay_window=self._config.replay_window,
            ekm=ekm,
        )
        return DataKeys(params, key_state.key_id, self.key2(session, key_state, ekm))

    # ------------------------------------------------------------------ renegotiation

    def renegotiation_deadline(self, state: Established) -> float:
        """When our own triggers fire (reference §8): reneg-sec after the key became active,
        or DUE_NOW once reneg-bytes / reneg-pkts (both directions, payload bytes) or the
        replay-id limit is reached. Not while a renegotiation is under way."""
        if state.renegotiation is not None:
            return NO_DEADLINE
        config = self._config
        key = state.data.primary
        if key is not None:
            if key.should_renegotiate:
                return DUE_NOW
            if config.reneg_bytes and key.bytes_sent + key.bytes_received >= config.reneg_bytes:
                return DUE_NOW
            packets = key.packets_sent + key.packets_received
            if config.reneg_pkts and packets >= config.reneg_pkts:
                return DUE_NOW
        if config.reneg_sec:
            return state.key_active_since + config.reneg_sec
        return NO_DEADLINE

    def next_deadline(self, state: Established) -> float | None:
        """The earliest of: the send switch, the lame duck's death, the renegotiation's
        hand-window, our own renegotiation triggers."""
        deadlines = [state.data.next_deadline()]
        if state.renegotiation is not None:
            deadlines.append(state.renegotiation.deadline)
        else:
            deadlines.append(self.renegotiation_deadline(state))
        due = [d for d in deadlines if d is not None and d != NO_DEADLINE]
        return min(due) if due else None

    def begin_renegotiation(self, state: Established, key_id: int, now: float) -> KeyState:
        """A soft reset: the primary key state becomes the lame duck (the previous lame duck
        goes), and a new key state sends its own P_CONTROL_SOFT_RESET_V1."""
        session = state.session
        primary = session.key_states[state.primary_key_id]
        state.data.retire(now + self._config.tran_window)
        key_state = self.new_key_state(session, key_id, Opcode.P_CONTROL_SOFT_RESET_V1, now)
        session.key_states = {primary.key_id: primary, key_id: key_state}
        state.renegotiation = Renegotiation(key_state, now + self._config.hand_window)
        return key_state

    def finish_renegotiation(self, state: Established, key_state: KeyState, now: float) -> None:
        """The new key state negotiated: its data keys become the primary. Raises
        MirageVPNError or ValueError if they cannot be derived."""
        key2 = self.key2(state.session, key_state, state.data.params.ekm)
        config = self._config
        window = config.hand_window  # ssl.c: auth_deferred_expire_window
        if config.reneg_sec:
            window = min(window, config.reneg_sec / 2)
        state.data.install(key_state.key_id, key2, send_from=key_state.started + window, now=now)
        state.primary_key_id = key_state.key_id
        state.key_active_since = now
        state.renegotiation = None

    @staticmethod
    def expire_lame_duck(state: Established, now: float) -> int | None:
        """Switch sending / drop the lame duck when due; the dead key id, if any."""
        dead = state.data.handle_timer(now)
        if dead is not None:
            state.session.key_states.pop(dead, None)
        return dead
