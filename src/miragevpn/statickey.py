"""Static-key mode (`secret`): no TLS, no control channel, one pre-shared key (reference §6.4).

LEGACY and insecure: no forward secrecy (whoever gets the key file decrypts every recorded
session), OpenVPN 2.6 deprecates it and 2.7 needs `--allow-deprecated-insecure-static-crypto`.
Accepted because some site-to-site links still use it; the client says so loudly at start.

Wire packets carry NO opcode byte (crypto.c: openvpn_encrypt_v1 with a long-form packet id):

    HMAC[N] | IV[16] | AES-CBC( replay_id[4] || time[4] || framed payload , PKCS#7 )

`time` is our Unix time when we first sent (the `wall_clock` given at construction); the
receiver's window restarts when the peer's time grows (a restarted peer is accepted, an older
time refused). Keys come from the 256-byte static key file: the cipher key is the first K bytes
of a slot's cipher half, the HMAC key the first N bytes of its hmac half; `secret f 0` sends
with keys[0] and receives with keys[1], `secret f 1` the other way round, no direction uses
keys[0] both ways (crypto.c: key_direction_state_init).

`StaticKeyClient` has the same public surface as `client.Client`, so the runtime drives it
unchanged: resolve, connect, then the tunnel is up at once with the config's `ifconfig`
(point-to-point: `ifconfig local remote`). Pings are sent after `ping` idle seconds,
`ping-restart` / `ping-exit` watch what we receive; OCC_REQUESTs from the peer are ignored
(OpenVPN simply repeats them), OCC_EXIT restarts.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .cbc import CBC_KEY_SIZES, DIGEST_SIZES, IV_LENGTH, make_cbc_hmac
from .clientstate import Stats
from .compression import Decompression, framing, session_decompression
from .config.model import AuthUserPass, Compression, Config, KeyDirection, StaticKey, Transport
from .config.model import ReplayWindow as ReplayWindowSettings
from .datachannel import MAX_REPLAY_ID, OCC_EXIT_MESSAGE, OCC_MAGIC, PING_MAGIC
from .errors import ConfigError, DecodeError, DropReason, MirageVPNError
from .events import (
    DisconnectionRequested,
    Event,
    IPAddress,
    ProgressReported,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TunnelEstablished,
)
from .framing import StreamDecoder, encode_frame
from .kdf import split_cbc_keys
from .push import PushedOptions
from .remotes import RemoteSelector, RetriesExhausted
from .replay import LongReplayWindow
from .tunnelsettings import resolve_tunnel_settings

__all__ = ["STATIC_KEY_WARNING", "StaticKeyChannel", "StaticKeyClient"]

STATIC_KEY_WARNING = (
    "WARNING: static-key mode (secret) has no forward secrecy: anyone who obtains the key "
    "file can decrypt every recorded session. OpenVPN 2.6 deprecates it and 2.7 refuses it "
    "without --allow-deprecated-insecure-static-crypto; move to TLS (client, ca, cert/key)"
)
LONG_REPLAY_ID_LENGTH = 8  # packet_id.h: id[4] || time[4]

_LONG_ID = struct.Struct("!II")


def _slots(direction: KeyDirection | None) -> tuple[int, int]:
    """(our send slot, our receive slot) of the static key for `direction`."""
    if direction is None:
        return 0, 0
    return (0, 1) if direction is KeyDirection.NORMAL else (1, 0)


class StaticKeyChannel:
    """The data packets of static-key mode, both directions (see the module doc)."""

    __slots__ = (
        "_deframe",
        "_frame",
        "_next_replay_id",
        "_open",
        "_replay",
        "_rng",
        "_seal",
        "_time",
        "auth",
        "cipher",
    )

    def __init__(
        self,
        *,
        cipher: str,
        auth: str,
        key: StaticKey,
        direction: KeyDirection | None,
        compression: Compression,
        replay_window: ReplayWindowSettings,
        rng: Callable[[int], bytes],
        time: int,
        decompression: Decompression | None = None,
    ) -> None:
        cipher, auth = cipher.upper(), auth.upper()
        if cipher not in CBC_KEY_SIZES:
            raise ConfigError(
                f"static-key mode needs a CBC cipher ({', '.join(CBC_KEY_SIZES)}), not {cipher}",
                directive="cipher",
            )
        if auth not in DIGEST_SIZES:
            raise ConfigError(f"unsupported digest {auth}", directive="auth")
        my_slot, their_slot = _slots(direction)
        keys = split_cbc_keys(
            key.key.value,
            key_size=CBC_KEY_SIZES[cipher],
            hmac_size=DIGEST_SIZES[auth],
            my_slot=my_slot,
            their_slot=their_slot,
        )
        self.cipher, self.auth = cipher, auth
        self._seal = make_cbc_hmac(cipher, auth, keys.my_cipher_key, keys.my_hmac_key).seal
        self._open = make_cbc_hmac(cipher, auth, keys.their_cipher_key, keys.their_hmac_key).open
        self._frame, self._deframe = framing(compression, decompression)
        self._replay = LongReplayWindow(replay_window.packets, replay_window.seconds)
        self._rng = rng
        self._time = time & 0xFFFFFFFF
        self._next_replay_id = 1

    def encrypt(self, payload: bytes) -> bytes:
        replay_id = self._next_replay_id
        if replay_id > MAX_REPLAY_ID:  # a long-form id may restart with a newer time instead
            raise MirageVPNError("static-key replay ids exhausted")
        if not payload:
            raise ValueError("empty data payload")
        self._next_replay_id = replay_id + 1
        head = _LONG_ID.pack(replay_id, self._time)
        return self._seal(self._rng(IV_LENGTH), head + self._frame(payload))

    def decrypt(self, packet: bytes, now: float) -> bytes:
        plain = self._open(packet)  # AuthenticationError / DecodeError
        if len(plain) <= LONG_REPLAY_ID_LENGTH:
            raise DecodeError("data packet too short (missing payload)")
        replay_id, time = _LONG_ID.unpack_from(plain)
        self._replay.check_and_record(replay_id, time, now)
        return self._deframe(plain[LONG_REPLAY_ID_LENGTH:])


# --------------------------------------------------------------------------- the client


@dataclass(slots=True)
class _Idle:
    """Resolving, connecting, or waiting to try again (until `until`)."""

    phase: str  # "waiting" | "resolving" | "connecting" | "ended"
    until: float | None = None
    address: IPAddress | None = None


@dataclass(slots=True)
class _Up:
    address: IPAddress
    transport: Transport
    channel: StaticKeyChannel
    decoder: StreamDecoder | None
    last_received: float
    last_sent: float


class StaticKeyClient:
    """The engine for a `secret` config; `client.Client`'s public surface (module doc)."""

    def __init__(
        self,
        config: Config,
        *,
        rng: Callable[[int], bytes],
        now: float,
        wall_clock: Callable[[], float],
        credentials: AuthUserPass | None = None,
        tls_ekm: bool = True,
    ) -> None:
        del credentials, tls_ekm  # TLS-mode options: nothing to authenticate or derive here
        if config.secret is None:
            raise ConfigError("not a static-key config (no `secret`)", directive="secret")
        self._config = config
        self._rng = rng
        self._wall_clock = wall_clock
        self._remotes = RemoteSelector(config, rng)
        self._events: collections.deque[Event] = collections.deque()
        self._tunnel: list[bytes] = []
        self.stats = Stats()
        self._state: _Idle | _Up = _Idle("waiting", until=now)
        self._events.append(ProgressReported(message=STATIC_KEY_WARNING))
        self._start_attempt(now)

    # ------------------------------------------------------------------ public surface

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def tunnel_packets(self) -> list[bytes]:
        packets, self._tunnel = self._tunnel, []
        return packets

    def handle_resolved(self, addresses: Sequence[IPAddress], *, now: float) -> None:
        state = self._state
        if not isinstance(state, _Idle) or state.phase != "resolving":
            return
        address = self._remotes.resolved(addresses)
        if address is None:
            self.handle_resolve_failed(now=now)
            return
        self._connect(address, now)

    def handle_resolve_failed(self, *, now: float) -> None:
        state = self._state
        if not isinstance(state, _Idle) or state.phase != "resolving":
            return
        try:
            pause = self._remotes.resolution_failed(now)
        except RetriesExhausted as exc:
            self._end(str(exc), exc)
            return
        self._wait(f"cannot resolve {self._remotes.remote.host}", pause, now)

    def handle_connected(self, *, now: float) -> None:
        state = self._state
        if not isinstance(state, _Idle) or state.phase != "connecting" or state.address is None:
            return
        config = self._config
        assert config.secret is not None
        transport = self._remotes.remote.proto.transport
        decompression, warning = session_decompression(
            config.compression,
            config.allow_compression,
            tun_mtu=config.tun_mtu,
            stats=self.stats.decompression,
        )
        if warning is not None:
            self._events.append(ProgressReported(message=warning))
        try:
            channel = StaticKeyChannel(
                cipher=config.cipher or "BF-CBC",
                auth=config.auth,
                key=config.secret,
                direction=config.secret_direction,
                compression=config.compression,
                replay_window=config.replay_window,
                rng=self._rng,
                time=int(self._wall_clock()),
                decompression=decompression,
            )
        except MirageVPNError as exc:
            self._end(f"cannot set up static-key mode: {exc}", exc)
            return
        decoder = StreamDecoder() if transport is Transport.TCP else None
        self._state = _Up(state.address, transport, channel, decoder, now, now)
        self._remotes.succeeded()
        settings, notes = resolve_tunnel_settings(
            config,
            PushedOptions(),
            remote_address=state.address,
            cipher=f"{channel.cipher} (HMAC-{channel.auth}, static key)",
            key_derivation="static key",
        )
        for note in notes:
            self._events.append(ProgressReported(message=note))
        self._events.append(TunnelEstablished(settings=settings))

    def handle_connection_failed(self, *, now: float) -> None:
        self.handle_connection_lost(now=now)

    def handle_connection_lost(self, *, now: float) -> None:
        state = self._state
        if isinstance(state, _Up):
            self._fail("the connection to the peer was lost", now)
        elif state.phase == "connecting":
            self._fail(f"cannot connect to {state.address}", now)

    def receive(self, data: bytes, *, now: float) -> None:
        state = self._state
        if not isinstance(state, _Up):
            self.stats.drop(DropReason.NO_SESSION)
            return
        if state.decoder is None:
            packets = [data]
        else:
            try:
                packets = state.decoder.feed(data)
            except DecodeError as exc:
                self._fail(f"TCP stream broken: {exc}", now)
                return
        for packet in packets:
            if self._state is not state:
                return
            self.stats.packets_received += 1
            self.stats.bytes_received += len(packet)
            self._receive_packet(state, packet, now)

    def encrypt_tunnel_packet(self, ip_packet: bytes, *, now: float) -> bytes | None:
        state = self._state
        if not isinstance(state, _Up) or not ip_packet:
            return None
        wire = state.channel.encrypt(ip_packet)
        state.last_sent = now
        stats = self.stats
        stats.tunnel_packets_out += 1
        stats.packets_sent += 1
        stats.bytes_sent += len(wire)
        return wire if state.decoder is None else encode_frame(wire)

    def data_to_send(self, *, now: float) -> list[bytes]:
        state = self._state
        ping = self._config.ping
        if not isinstance(state, _Up) or not ping or now < state.last_sent + ping:
            return []
        wire = state.channel.encrypt(PING_MAGIC)
        state.last_sent = now
        self.stats.pings_sent += 1
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(wire)
        return [wire if state.decoder is None else encode_frame(wire)]

    def get_timer(self) -> float | None:
        state = self._state
        if isinstance(state, _Idle):
            return state.until
        config = self._config
        deadlines = [
            t
            for t in (
                state.last_sent + config.ping if config.ping else None,
                state.last_received + config.ping_restart if config.ping_restart else None,
                state.last_received + config.ping_exit if config.ping_exit else None,
            )
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, *, now: float) -> None:
        state = self._state
        config = self._config
        if isinstance(state, _Idle):
            if state.until is None or now < state.until:
                return
            if state.phase == "waiting":
                self._start_attempt(now)
            elif state.phase == "connecting":
                self._fail(f"connecting to {state.address} timed out (connect-timeout)", now)
            return
        if config.ping_exit and now >= state.last_received + config.ping_exit:
            self._end("no packet from the peer for ping-exit seconds", None)
        elif config.ping_restart and now >= state.last_received + config.ping_restart:
            self._fail("no packet from the peer for ping-restart seconds", now)

    def close(self, *, now: float) -> None:
        del now
        self._end("closed", None)

    def answer_challenge(self, response: str, *, now: float) -> None:
        """Nothing is ever asked without TLS (no auth-user-pass in static-key mode)."""
        del response, now

    # ------------------------------------------------------------------ internals

    def _receive_packet(self, state: _Up, packet: bytes, now: float) -> None:
        try:
            payload = state.channel.decrypt(packet, now)
        except DecodeError as exc:
            self.stats.drop(DropReason.of(exc))
            if state.decoder is not None and exc.fatal_on_tcp:
                self._fail(f"bad packet on TCP: {exc}", now)
            return
        state.last_received = now
        if payload == PING_MAGIC:
            self.stats.pings_received += 1
        elif payload == OCC_EXIT_MESSAGE:
            self._fail("the peer is exiting (OCC_EXIT)", now)
        elif payload.startswith(OCC_MAGIC):
            self.stats.drop(DropReason.OCC_MESSAGE)  # OCC_REQUEST: the peer repeats it
        else:
            self._tunnel.append(payload)
            self.stats.tunnel_packets_in += 1

    def _start_attempt(self, now: float) -> None:
        target = self._remotes.target()
        if target.address is None:
            self._state = _Idle("resolving")
            self._events.append(
                ResolutionRequested(
                    host=self._remotes.host_to_resolve, family=target.remote.proto.family
                )
            )
        else:
            self._connect(target.address, now)

    def _connect(self, address: IPAddress, now: float) -> None:
        self._state = _Idle("connecting", until=now + self._config.connect_timeout, address=address)
        self._events.append(self._remotes.connection_request(address))

    def _fail(self, reason: str, now: float) -> None:
        try:
            pause = self._remotes.failed()
        except RetriesExhausted as exc:
            self._end(f"{reason}; {exc}", exc)
            return
        self._events.append(DisconnectionRequested(reason=reason))
        self._wait(reason, pause, now)

    def _wait(self, reason: str, pause: float, now: float) -> None:
        self.stats.restarts += 1
        self._state = _Idle("waiting", until=now + pause)
        self._events.append(SessionRestarting(reason=reason, retry_in=pause))

    def _end(self, reason: str, error: MirageVPNError | None) -> None:
        state = self._state
        if isinstance(state, _Idle) and state.phase == "ended":
            return
        if isinstance(state, _Up) or state.phase == "connecting":
            self._events.append(DisconnectionRequested(reason=reason))
        self._state = _Idle("ended")
        self._events.append(SessionEnded(reason=reason, error=error))
