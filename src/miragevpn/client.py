"""The OpenVPN client state machine: the one object a runtime drives (docs/ARCHITECTURE.md).

The states, their data and the legal moves are in clientstate.py; this module is the behaviour.

Receive pipeline (`receive`): [TCP: deframe] → opcode byte → data packet: key by key id →
decrypt (AEAD + replay, then unframe/decompress: compression.py) → ping? drop : tunnel packet;
control packet: unwrap (tls-auth / tls-crypt: authenticate, replay) → session ids → key state
(reliable → TLS → text) → control messages (what each one does: control.py). Send pipeline:
key states' reliable packets → wrap → [TCP: frame] (`data_to_send`); `encrypt_tunnel_packet` →
send key → encrypt → [TCP: frame].
Every wire packet is counted both ways in `stats` (packets/bytes sent and received).

Renegotiation (reference §8): the server's P_CONTROL_SOFT_RESET_V1 for a new key id, or our
own trigger (reneg-sec since the key became active, reneg-bytes, reneg-pkts, replay ids near
exhaustion), starts a new key state; the old data key becomes the lame duck (datakeys.py says
which key we send with, and when the lame duck dies).

UDP: a bad, unauthenticated or replayed packet is dropped and counted in `stats` under a
`DropReason` (so are duplicate control packets, which are acked again); TCP: a broken frame
ends the session (restart), as OpenVPN does.

Who writes what: the client writes its own state (clientstate.py) and the session's link
timers; the session's `SessionKeys` (keying.py) is the only writer of key states, data keys and
renegotiation and answers with outcomes; `control` only returns reactions (`_apply` carries
them out).

Time: every `now` is monotonic seconds (keyword-only); `wall_clock()` (given at construction,
like `rng`) is read only for the control-channel replay ids' `time` field, which OpenVPN
defines as Unix time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import assert_never

from . import control
from .challenge import Challenge
from .clientstate import (
    TRANSITIONS,
    Asking,
    Closing,
    Connecting,
    Ended,
    Established,
    Handshaking,
    Pulling,
    Resolving,
    Session,
    State,
    Stats,
    Waiting,
    due_data_packets,
    next_deadline,
)
from .config.model import AuthUserPass, Config, Transport
from .datachannel import OCC_EXIT_MESSAGE, OCC_MAGIC, PING_MAGIC
from .errors import (
    AuthenticationError,
    DecodeError,
    DropReason,
    LocalProtocolError,
    MirageVPNError,
    ProtocolError,
    ServerCertificateRejected,
    TlsAlertReceived,
)
from .events import (
    ChallengeRequested,
    ControlMessageReceived,
    DisconnectionRequested,
    Event,
    IPAddress,
    ProgressReported,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TunnelEstablished,
)
from .framing import encode_frame
from .keying import Keying, KeysReceived
from .messages import PushReply, PushReplyAssembler, encode_control_message
from .packet import ControlPacket, Opcode
from .remotes import Advance, RemoteSelector, RetriesExhausted

__all__ = ["Client", "Stats"]

Rng = Callable[[int], bytes]
WallClock = Callable[[], float]  # Unix time in seconds

PUSH_REQUEST_INTERVAL = 5.0  # push.c: PUSH_REQUEST_INTERVAL
_OP_DATA_V1 = int(Opcode.P_DATA_V1)
_OP_DATA_V2 = int(Opcode.P_DATA_V2)
_SESSION_STATES = (Handshaking, Pulling, Established, Closing)


class Client:
    """A sans-IO OpenVPN 2.6-compatible client (see the module doc and ARCHITECTURE.md).

    The runtime drives it with: `receive` (wire bytes), `data_to_send`, `encrypt_tunnel_packet`
    and `tunnel_packets` (the data path), `get_timer`/`handle_timer` (the one deadline),
    `next_event`, `handle_resolved`/`handle_resolve_failed` (after ResolutionRequested),
    `handle_connected` (the transport is open), `handle_connection_lost` (the open transport
    failed or the server closed it, e.g. a TCP EOF or reset: in every state with a transport
    the client restarts with the usual back-off, or ends when retries are exhausted; while
    closing it ends), `handle_connection_failed` (opening failed; in later states the same as
    `handle_connection_lost`), and `close`. `stats` holds the counters. Every `now` is
    monotonic seconds and keyword-only.
    """

    def __init__(
        self,
        config: Config,
        *,
        rng: Rng,
        now: float,
        wall_clock: WallClock,
        credentials: AuthUserPass | None = None,
        tls_ekm: bool = True,
    ) -> None:
        """`rng(n)` gives n random bytes; `now` is monotonic; `wall_clock()` is Unix time
        (read for the control channel's replay ids only). `tls_ekm=False` announces neither
        TLS-EKM nor dynamic tls-crypt (IV_PROTO bits 3, 9): data keys come from OpenVPN's PRF,
        as with servers that mishandle the exporter."""
        self._config = config
        self._wall_clock = wall_clock
        self._keying = Keying(
            config, rng=rng, credentials=credentials or config.auth_user_pass, tls_ekm=tls_ekm
        )
        self._remotes = RemoteSelector(config, rng)
        self._events: collections.deque[Event] = collections.deque()
        self._tunnel: list[bytes] = []
        self.stats = Stats()
        self._state: State = Waiting(now)  # the first attempt starts at once
        self._start_attempt(now)

    # ------------------------------------------------------------------ public surface

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def tunnel_packets(self) -> list[bytes]:
        packets, self._tunnel = self._tunnel, []
        return packets

    def handle_resolved(self, addresses: Sequence[IPAddress], *, now: float) -> None:
        if not isinstance(self._state, Resolving):
            return
        address = self._remotes.resolved(addresses)
        if address is None:
            self.handle_resolve_failed(now=now)
            return
        self._connect(address, now)

    def handle_resolve_failed(self, *, now: float) -> None:
        if not isinstance(self._state, Resolving):
            return
        host = self._remotes.remote.host
        try:
            pause = self._remotes.resolution_failed(now)
        except RetriesExhausted as exc:
            self._end(str(exc), exc)
            return
        self._wait(f"cannot resolve {host}", pause, now)

    def handle_connected(self, *, now: float) -> None:
        state = self._state
        if not isinstance(state, Connecting):
            return
        remote = self._remotes.remote
        session = self._keying.new_session(state.address, remote.port, remote.proto.transport, now)
        poll = now + self._config.server_poll_timeout
        self._move(Handshaking(session, now + self._config.hand_window, poll))
        self._progress(f"connected to {state.address} port {remote.port}; sent our reset")

    def handle_connection_failed(self, *, now: float) -> None:
        """The transport could not be opened; in any later state, the same as
        `handle_connection_lost` (so a runtime may report both through this one call)."""
        self.handle_connection_lost(now=now)

    def handle_connection_lost(self, *, now: float) -> None:
        """The transport failed or was closed by the server (TCP close or reset, an unusable
        UDP socket): in every state that has a transport, restart with the usual back-off (or
        end when the retries are exhausted); while closing, end. Elsewhere nothing happens."""
        state = self._state
        if isinstance(state, Connecting):
            self._fail(f"cannot connect to {state.address}", now)
        elif isinstance(state, Closing):
            self._end(state.reason, None)
        elif isinstance(state, _SESSION_STATES):
            self._fail(control.connection_lost_reason(state), now)

    def answer_challenge(self, response: str, *, now: float) -> None:
        """The code `ChallengeRequested` asked for: the attempt starts (else: ignored)."""
        state = self._state
        if isinstance(state, Asking):
            self._keying.answer(state.challenge, response)
            self._start_attempt(now)

    def receive(self, data: bytes, *, now: float) -> None:
        state = self._state
        if not isinstance(state, _SESSION_STATES):
            self.stats.drop(DropReason.NO_SESSION)
            return
        session = state.session
        if session.decoder is None:
            stats = self.stats
            stats.packets_received += 1
            stats.bytes_received += len(data)
            self._receive_packet(session, data, now)
            return
        try:
            packets = session.decoder.feed(data)
        except DecodeError as exc:
            self._fail(f"TCP stream broken: {exc}", now)
            return
        stats = self.stats
        for packet in packets:
            if self._state is not state:
                return
            stats.packets_received += 1
            stats.bytes_received += len(packet)
            self._receive_packet(session, packet, now)

    def encrypt_tunnel_packet(self, ip_packet: bytes, *, now: float) -> bytes | None:
        state = self._state
        if type(state) is not Established or not ip_packet:
            return None
        key = state.data.send_key
        if key is None:
            return None
        wire = key.encrypt(ip_packet)
        session = state.session
        session.last_sent = now
        stats = self.stats
        stats.tunnel_packets_out += 1
        stats.packets_sent += 1
        stats.bytes_sent += len(wire)
        return wire if session.decoder is None else encode_frame(wire)

    def data_to_send(self, *, now: float) -> list[bytes]:
        state = self._state
        if not isinstance(state, _SESSION_STATES):
            return []
        session = state.session
        keys = session.keys
        if isinstance(state, Established):
            self._renegotiation_began(keys.maybe_renegotiate(now), by_us=True)
        out: list[bytes] = []
        if session.text_out:
            primary = keys.primary()
            for text in session.text_out:
                primary.send_text(text)
            session.text_out.clear()
        wall_time: float | None = None  # read once, and only if a control packet goes out
        for key_state in keys.key_states():
            packets = key_state.reliable.packets_to_send(
                now, my_session_id=session.my_session_id, their_session_id=session.their_session_id
            )
            for packet in packets:
                if wall_time is None:
                    wall_time = self._wall_clock()
                out.append(session.wrap.wrap(packet, wall_time))
        if isinstance(state, Established | Closing):
            out += due_data_packets(state, now, self.stats)
        if out:
            session.last_sent = now
        self.stats.packets_sent += len(out)
        self.stats.bytes_sent += sum(len(p) for p in out)
        if session.decoder is not None:
            return [encode_frame(p) for p in out]
        return out

    def get_timer(self) -> float | None:
        return next_deadline(self._state)

    def handle_timer(self, *, now: float) -> None:
        state = self._state
        if isinstance(state, Waiting):
            if now >= state.until:
                self._start_attempt(now)
        elif isinstance(state, Connecting):
            if now >= state.deadline:
                self._fail(f"connecting to {state.address} timed out (connect-timeout)", now)
        elif isinstance(state, Handshaking):
            if state.poll_deadline is not None and now >= state.poll_deadline:
                reason = "no answer from the server (server-poll-timeout)"
                self._fail(
                    control.with_authentication_hint(reason, state.session, self._config), now
                )
            elif now >= state.deadline:
                reason = "TLS negotiation did not finish within hand-window"
                self._fail(
                    control.with_authentication_hint(reason, state.session, self._config), now
                )
        elif isinstance(state, Pulling):
            if now >= state.deadline:
                self._fail("no PUSH_REPLY within hand-window", now)
            elif now >= state.next_push_request:
                self._send_text(state.session, "PUSH_REQUEST")
                state.next_push_request = now + PUSH_REQUEST_INTERVAL
        elif isinstance(state, Established):
            last = state.session.last_received
            if state.ping_exit and now >= last + state.ping_exit:
                self._end("no packet from the server for ping-exit seconds", None)
            elif state.ping_restart and now >= last + state.ping_restart:
                self._fail("no packet from the server for ping-restart seconds", now)
            else:
                self._keys_timer(state, now)
        elif isinstance(state, Closing) and now >= state.deadline:
            self._end(state.reason, None)

    def close(self, *, now: float) -> None:
        """Leave in order: EXIT (cc-exit) or OCC_EXIT (explicit-exit-notify), then end."""
        state = self._state
        if isinstance(state, Ended | Closing):
            return
        if not isinstance(state, Established):
            self._end("closed", None)
            return
        session = state.session
        seconds = float(max(state.exit_notify, 1))
        if state.cc_exit:
            self._send_text(session, "EXIT")
            self._move(Closing(session, None, now + seconds, None, "closed"))
        elif state.exit_notify and session.transport is Transport.UDP:
            self._move(Closing(session, state.data, now + seconds, now, "closed"))
        else:
            self._end("closed", None)

    # ------------------------------------------------------------------ receiving

    def _receive_packet(self, session: Session, packet: bytes, now: float) -> None:
        if not packet:
            self.stats.drop(DropReason.EMPTY)
            return
        opcode = packet[0] >> 3
        if opcode in (_OP_DATA_V2, _OP_DATA_V1):  # the hot path
            state = self._state
            data = state.data if isinstance(state, (Established, Closing)) else None
            if data is None:
                self.stats.drop(DropReason.DATA_BEFORE_KEYS)
                return
            key = data.by_key_id[packet[0] & 7]
            if key is None:
                self.stats.drop(DropReason.UNKNOWN_KEY_ID)
                return
            try:
                payload = key.decrypt(packet, now)
            except DecodeError as exc:
                self._bad_packet(session, exc, now)
                return
            session.last_received = now
            if payload == PING_MAGIC:
                self.stats.pings_received += 1
            elif payload.startswith(OCC_MAGIC):
                self._occ_message(payload, now)
            else:
                self._tunnel.append(payload)
                self.stats.tunnel_packets_in += 1
            return
        try:
            control = session.wrap.unwrap(packet, now)
        except DecodeError as exc:
            if isinstance(exc, AuthenticationError):
                session.failed_authentication += 1
            self._bad_packet(session, exc, now)
            return
        self._receive_control(session, control, now)

    def _occ_message(self, payload: bytes, now: float) -> None:
        """OCC_EXIT: the server is going away (occ.c: process_received_occ_msg); other OCC
        messages (replies, MTU tests) are not for a pull client."""
        if payload == OCC_EXIT_MESSAGE:
            self._fail("server is exiting (OCC_EXIT)", now)
        else:
            self.stats.drop(DropReason.OCC_MESSAGE)

    def _bad_packet(self, session: Session, exc: DecodeError, now: float) -> None:
        self.stats.drop(DropReason.of(exc))
        if session.decoder is not None and exc.fatal_on_tcp:
            self._fail(f"bad packet on TCP: {exc}", now)

    def _receive_control(self, session: Session, packet: ControlPacket, now: float) -> None:
        state = self._state
        assert isinstance(state, _SESSION_STATES)
        foreign = session.check_ids(packet)
        if isinstance(state, Handshaking) and session.their_session_id is not None:
            state.poll_deadline = None  # the server answered
        if foreign is not None:
            self.stats.drop(foreign)
            return
        session.last_received = now
        try:
            received = session.keys.receive(
                packet,
                now,
                their_session_id=session.their_session_id or b"",
                may_renegotiate=isinstance(state, Established),
            )
        except ServerCertificateRejected as exc:
            self._end(str(exc), exc)
            return
        except TlsAlertReceived as exc:
            self._fail(str(exc), now)
            return
        except (DecodeError, ProtocolError) as exc:
            self._fail(f"control channel failed: {exc}", now)
            return
        self._keys_received(state, received, now)

    def _keys_received(self, state: State, received: KeysReceived, now: float) -> None:
        """Turn what a control packet did to the keys into counters, events and moves."""
        if received.dropped is not None:
            self.stats.drop(received.dropped)
        self._renegotiation_began(received.began, by_us=False)
        if received.tls is not None:
            self._events.append(received.tls)
        if received.first_negotiated and isinstance(state, Handshaking):
            self._progress("key exchange done; requesting the configuration (PUSH_REQUEST)")
            self._send_text(state.session, "PUSH_REQUEST")
            assembler = PushReplyAssembler()
            pulling = Pulling(state.session, state.deadline, now + PUSH_REQUEST_INTERVAL, assembler)
            self._move(pulling)
        if received.renegotiated is not None:
            self.stats.renegotiations += 1
            self._progress(f"new data keys (key id {received.renegotiated})")
        for text in received.messages:
            if self._state is not state and not isinstance(self._state, Established):
                break
            token_in_use = self._keying.token_may_expire
            reactions = control.react(
                text, self._state, config=self._config, now=now, auth_token_in_use=token_in_use
            )
            self._apply(reactions, now)

    # ------------------------------------------------------------------ control messages

    def _apply(self, reactions: list[control.Reaction], now: float) -> None:
        """Carry out control's reactions to one message, in order, while the session lasts."""
        for reaction in reactions:
            state = self._state
            if not isinstance(state, _SESSION_STATES):
                return
            match reaction:
                case control.RestartSession(reason=reason, advance=advance, backoff=backoff):
                    self._fail(reason, now, advance, backoff=backoff)
                case control.StopSession(reason=reason, error=error):
                    self._end(reason, error)
                case control.CollectPushReply(part=part):
                    self._collect_push_reply(part, now)
                case control.Tunnel():
                    self._tunnel_up(reaction, now)
                case control.ExtendHandWindow(until=until):
                    if isinstance(state, Pulling):
                        state.deadline = max(state.deadline, until)
                case control.UseAuthToken(token=token, user=user):
                    self._keying.use_auth_token(token, user)
                    self._forget_password_if_asked()
                case control.ForgetAuthToken():
                    self._keying.forget_auth_token()
                case control.AskChallenge(challenge=challenge):
                    self._ask(challenge, "the server asks for a one-time code")
                case ProgressReported() | ControlMessageReceived():
                    self._events.append(reaction)
                case _:
                    assert_never(reaction)

    def _collect_push_reply(self, part: PushReply, now: float) -> None:
        state = self._state
        if not isinstance(state, Pulling):
            return
        try:
            lines = state.assembler.add(part)
        except (DecodeError, ProtocolError) as exc:
            self._fail(f"unusable PUSH_REPLY: {exc}", now)
            return
        if lines is not None:
            ekm, counts = self._keying.tls_ekm, self.stats.decompression
            out = control.push_reply(lines, state.session, counts, config=self._config, tls_ekm=ekm)
            self._apply(out, now)

    def _tunnel_up(self, tunnel: control.Tunnel, now: float) -> None:
        state = self._state
        if not isinstance(state, Pulling):
            return
        session = state.session
        try:
            data = session.keys.start_data(
                tunnel.params, their_session_id=session.their_session_id or b"", now=now
            )
        except (MirageVPNError, ValueError) as exc:
            error = exc if isinstance(exc, MirageVPNError) else LocalProtocolError(str(exc))
            self._end(f"cannot set up the data channel: {exc}", error)
            return
        settings = tunnel.settings
        self._move(
            Established.from_push(
                self._config, tunnel.pushed, session=session, data=data, settings=settings
            )
        )
        session.last_received = now
        self._remotes.succeeded()
        self._events.append(TunnelEstablished(settings=settings))
        self._forget_password_if_asked()

    def _forget_password_if_asked(self) -> None:
        if isinstance(self._state, Established) and self._keying.tunnel_authenticated():
            self._progress("auth-nocache: password dropped; the server's auth-token replaces it")

    # ------------------------------------------------------------------ renegotiation

    def _renegotiation_began(self, key_id: int | None, *, by_us: bool) -> None:
        if key_id is not None:
            who = "we renegotiate" if by_us else "server renegotiates"
            self._progress(f"{who} keys (key id {key_id})")

    def _keys_timer(self, state: Established, now: float) -> None:
        timer = state.session.keys.handle_timer(now)
        if timer.timed_out:
            self._fail("key renegotiation did not finish within hand-window", now)
            return
        if timer.expired is not None:
            self._progress(f"lame-duck key (key id {timer.expired}) expired (tran-window)")
        self._renegotiation_began(timer.began, by_us=True)

    # ------------------------------------------------------------------ sending

    def _send_text(self, session: Session, text: str) -> None:
        session.text_out.append(encode_control_message(text))

    # ------------------------------------------------------------------ transitions

    def _move(self, new: State) -> None:
        allowed = TRANSITIONS[type(self._state)]
        if type(new) not in allowed:
            raise LocalProtocolError(
                f"illegal transition {type(self._state).__name__} -> {type(new).__name__}"
            )
        self._state = new

    def _progress(self, message: str) -> None:
        self._events.append(ProgressReported(message=message))

    def _start_attempt(self, now: float) -> None:
        question = self._keying.question()
        if question is not None:
            self._ask(question, "a one-time code goes with the password (static-challenge)")
            return
        target = self._remotes.target()
        if target.address is None:
            self._move(Resolving())
            self._events.append(
                ResolutionRequested(
                    host=self._remotes.lookup_name(), family=target.remote.proto.family
                )
            )
        else:
            self._connect(target.address, now)

    def _connect(self, address: IPAddress, now: float) -> None:
        self._move(Connecting(address, now + self._config.connect_timeout))
        self._events.append(self._remotes.connection_request(address))

    def _fail(
        self, reason: str, now: float, advance: Advance = Advance.ADDRESS, *, backoff: float = 0.0
    ) -> None:
        """The current attempt or session is lost: disconnect, pause (at least `backoff`, the
        server's request), try again."""
        had_session = isinstance(self._state, _SESSION_STATES)
        was_established = isinstance(self._state, Established)
        try:
            if was_established and advance is Advance.NO:
                pause = self._remotes.restarted()
            else:
                pause = self._remotes.failed(advance, backoff=backoff)
        except RetriesExhausted as exc:
            self._end(f"{reason}; {exc}", exc)
            return
        if had_session or isinstance(self._state, Connecting):
            self._events.append(DisconnectionRequested(reason=reason))
        self._wait(reason, pause, now)

    def _wait(self, reason: str, pause: float, now: float) -> None:
        self.stats.restarts += 1
        self._move(Waiting(now + pause))
        self._events.append(SessionRestarting(reason=reason, retry_in=pause))

    def _ask(self, challenge: Challenge, reason: str) -> None:
        """Wait (no deadline) for `answer_challenge`; the same address is tried next."""
        if isinstance(self._state, _SESSION_STATES):
            self._events.append(DisconnectionRequested(reason=reason))
        self._move(Asking(challenge))
        self._events.append(ChallengeRequested.of(challenge))

    def _end(self, reason: str, error: MirageVPNError | None) -> None:
        if isinstance(self._state, Ended):
            return
        if isinstance(self._state, (Connecting, *_SESSION_STATES)):
            self._events.append(DisconnectionRequested(reason=reason))
        self._state = Ended()
        self._events.append(SessionEnded(reason=reason, error=error))
