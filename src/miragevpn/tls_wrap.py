"""Control-channel protection for the client side: none, tls-auth, tls-crypt, tls-crypt-v2.

Every implementation of `ControlChannelWrap` owns, for one session (all key ids):
- my replay id counter (long form: id from 1, `time` = the wall clock's Unix seconds at first
  use, given to `wrap`; the client gets it from its `wall_clock`), a new id
  for every transmission, retransmissions and acks included (reference §2.3);
- their replay window (`LongReplayWindow`, the configured `replay-window`).

`unwrap` order (OpenVPN ssl_pkt.c: read_control_auth): authenticate (AuthenticationError),
then the replay check (ReplayError), then decode the control fields (DecodeError). Anything
that is not a control packet is a DecodeError.

Layouts (reference §2.3, §3.2, §3.4):

    tls-auth:  byte0 | sid[8] | hmac[H] | replay_id[4] | time[4] | body
               hmac = HMAC-<auth>(key_out, replay_id | time | byte0 | sid | body)
    tls-crypt: byte0 | sid[8] | replay_id[4] | time[4] | tag[32] | AES-256-CTR(body)
               tag = HMAC-SHA256(Ka_out, byte0 | sid | replay_id | time | body); IV = tag[:16]
    tls-crypt-v2 (client): tls-crypt with Kc, and WKc appended in clear to
               P_CONTROL_HARD_RESET_CLIENT_V3 and P_CONTROL_WKC_V1; replay ids start at
               0x0f000001 (early negotiation, reference §1.9)

`body` is `packet.encode_control_body` (ack_count | acks | [remote sid] | [seq] | payload).

For tests (and for a server-side peer in tests) the key direction of tls-crypt can be chosen
and the replay counter and time preset: `next_replay_id=` and `time=` keyword arguments.
"""

from __future__ import annotations

import hmac
import struct
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .config.model import KeyDirection, StaticKey, TlsAuth, TlsCrypt, TlsCryptV2
from .config.model import ReplayWindow as ReplayWindowSettings
from .errors import AuthenticationError, ConfigError, DecodeError, LocalProtocolError
from .packet import (
    EARLY_NEG_START,
    SESSION_ID_LENGTH,
    ControlPacket,
    Opcode,
    decode_control,
    decode_control_body,
    decode_header,
    encode_control,
    encode_control_body,
    encode_header,
    is_control,
)
from .replay import LongReplayWindow

__all__ = [
    "TLS_AUTH_DIGESTS",
    "TLS_CRYPT_OVERHEAD",
    "ControlChannelWrap",
    "PlainWrap",
    "TlsAuthWrap",
    "TlsCryptV2Wrap",
    "TlsCryptWrap",
    "authentication_failure_hint",
    "make_wrap",
    "static_key_slices",
    "tls_crypt_open",
    "tls_crypt_seal",
]

# `auth` digests usable for tls-auth, with their output sizes (= HMAC key sizes, crypto.c).
TLS_AUTH_DIGESTS: dict[str, int] = {
    "MD5": 16,
    "SHA1": 20,
    "SHA224": 28,
    "SHA256": 32,
    "SHA384": 48,
    "SHA512": 64,
}
_HASHLIB_NAMES = {"MD5": "md5", "SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256"}
_HASHLIB_NAMES |= {"SHA384": "sha384", "SHA512": "sha512"}

_REPLAY = struct.Struct("!II")  # long-form packet id: replay id, time (packet_id.h)
_REPLAY_SIZE = _REPLAY.size
_MAX_REPLAY_ID = 0xFFFFFFFF  # packet_id.h: PACKET_ID_MAX
TLS_CRYPT_TAG_SIZE = 32  # tls_crypt.h: TLS_CRYPT_TAG_SIZE
TLS_CRYPT_OVERHEAD = _REPLAY_SIZE + TLS_CRYPT_TAG_SIZE  # 40 bytes more than a plain packet
_TLS_CRYPT_KEY_SIZE = 32  # AES-256
_HEADER_SIZE = 1 + SESSION_ID_LENGTH  # byte0 | session id
_WKC_MAX = 1024  # tls_crypt.h: TLS_CRYPT_V2_MAX_WKC_LEN
_DEFAULT_REPLAY_WINDOW = ReplayWindowSettings()  # replay-window 64 15


def static_key_slices(key: StaticKey, direction: KeyDirection | None) -> tuple[bytes, bytes]:
    """(out slot, in slot) of a 256-byte static key: each slot is `cipher[64] | hmac[64]`.

    crypto.c: key_direction_state_init; None is bidirectional (keys[0] both ways)."""
    raw = key.key.value
    keys = (raw[0:128], raw[128:256])
    if direction is None:
        return keys[0], keys[0]
    if direction is KeyDirection.NORMAL:
        return keys[0], keys[1]
    return keys[1], keys[0]


def tls_crypt_seal(*, cipher_key: bytes, auth_key: bytes, clear: bytes, plaintext: bytes) -> bytes:
    """The tls-crypt primitive (tls_crypt.c: tls_crypt_wrap): `tag || ciphertext` with
    tag = HMAC-SHA256(auth_key, clear || plaintext), ciphertext = AES-256-CTR(cipher_key,
    IV = tag[:16], plaintext). `clear` is what travels in clear before the tag (for control
    packets: byte0 | session id | replay id | time). Also how a tls-crypt-v2 WKc is made."""
    tag = hmac.digest(auth_key, clear + plaintext, "sha256")
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CTR(tag[:16])).encryptor()
    return tag + encryptor.update(plaintext) + encryptor.finalize()


def tls_crypt_open(*, cipher_key: bytes, auth_key: bytes, clear: bytes, sealed: bytes) -> bytes:
    """Inverse of `tls_crypt_seal`: the plaintext, or AuthenticationError."""
    if len(sealed) < TLS_CRYPT_TAG_SIZE:
        raise DecodeError("tls-crypt data shorter than its tag")
    tag = sealed[:TLS_CRYPT_TAG_SIZE]
    decryptor = Cipher(algorithms.AES(cipher_key), modes.CTR(tag[:16])).decryptor()
    plaintext = decryptor.update(sealed[TLS_CRYPT_TAG_SIZE:]) + decryptor.finalize()
    if not hmac.compare_digest(tag, hmac.digest(auth_key, clear + plaintext, "sha256")):
        raise AuthenticationError("tls-crypt tag mismatch")
    return plaintext


class ControlChannelWrap(Protocol):
    """What the TLS session uses to put control packets on the wire and take them off."""

    @property
    def overhead(self) -> int:
        """Bytes a wrapped packet has over the plain encoding (without any WKc)."""
        ...

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        """The full wire bytes of `packet`, with the next replay id. `wall_time` is Unix
        time (the long-form replay id's `time` field is the sender's wall clock)."""
        ...

    def unwrap(self, data: bytes, now: float) -> ControlPacket:
        """Authenticate, replay-check and decode; DecodeError or a subclass on failure. `now`
        is monotonic (the replay window's time backtrack is a duration)."""
        ...


class PlainWrap:
    """No protection: the plain layout of reference §1.4."""

    overhead = 0

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        return encode_control(packet)

    def unwrap(self, data: bytes, now: float) -> ControlPacket:
        return decode_control(data)


class _LongFormCounter:
    """My long-form replay id: from 1, time fixed at first use, rolls over only in a new second.

    packet_id.c: packet_id_send_update (long form)."""

    __slots__ = ("last_id", "time")

    def __init__(self, next_replay_id: int, time: int | None) -> None:
        if not 1 <= next_replay_id <= _MAX_REPLAY_ID:
            raise ValueError("next_replay_id must be within 1..0xffffffff")
        self.last_id = next_replay_id - 1
        self.time = time

    def next(self, wall_time: float) -> tuple[int, int]:
        if self.time is None:
            self.time = int(wall_time)
        if self.last_id == _MAX_REPLAY_ID:
            if int(wall_time) <= self.time:
                raise LocalProtocolError("control replay id exhausted within one second")
            self.time = int(wall_time)
            self.last_id = 0
        self.last_id += 1
        return self.last_id, self.time


def _split_header(data: bytes, minimum: int) -> tuple[Opcode, int]:
    if len(data) < minimum:
        raise DecodeError(f"wrapped control packet of {len(data)} bytes, at least {minimum}")
    opcode, key_id = decode_header(data)
    if not is_control(opcode):
        raise DecodeError(f"{opcode.name} is not a control packet")
    return opcode, key_id


class TlsAuthWrap:
    """tls-auth: an HMAC (the `auth` digest) over every control packet (reference §2)."""

    __slots__ = ("_counter", "_digest", "_in_key", "_out_key", "_replay", "_size", "overhead")

    def __init__(
        self,
        key: StaticKey,
        direction: KeyDirection | None,
        digest: str,
        *,
        replay_window: ReplayWindowSettings = _DEFAULT_REPLAY_WINDOW,
        next_replay_id: int = 1,
        time: int | None = None,
    ) -> None:
        name = digest.upper().replace("-", "")
        size = TLS_AUTH_DIGESTS.get(name)
        if size is None:
            raise ConfigError(f"unsupported tls-auth digest {digest!r}", directive="auth")
        self._digest = _HASHLIB_NAMES[name]
        self._size = size
        out_slot, in_slot = static_key_slices(key, direction)
        self._out_key = out_slot[64 : 64 + size]
        self._in_key = in_slot[64 : 64 + size]
        self._counter = _LongFormCounter(next_replay_id, time)
        self._replay = LongReplayWindow(replay_window.packets, replay_window.seconds)
        self.overhead = size + _REPLAY_SIZE

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        replay_id, time = self._counter.next(wall_time)
        replay = _REPLAY.pack(replay_id, time)
        header = bytes((encode_header(packet.opcode, packet.key_id),)) + packet.session_id
        body = encode_control_body(packet)
        mac = hmac.digest(self._out_key, replay + header + body, self._digest)
        return header + mac + replay + body

    def unwrap(self, data: bytes, now: float) -> ControlPacket:
        size = self._size
        opcode, key_id = _split_header(data, _HEADER_SIZE + size + _REPLAY_SIZE)
        header = data[:_HEADER_SIZE]
        mac = data[_HEADER_SIZE : _HEADER_SIZE + size]
        replay = data[_HEADER_SIZE + size : _HEADER_SIZE + size + _REPLAY_SIZE]
        body = data[_HEADER_SIZE + size + _REPLAY_SIZE :]
        expected = hmac.digest(self._in_key, replay + header + body, self._digest)
        if not hmac.compare_digest(mac, expected):
            raise AuthenticationError("tls-auth HMAC mismatch")
        replay_id, time = _REPLAY.unpack(replay)
        self._replay.check_and_record(replay_id, time, now)
        return decode_control_body(opcode, key_id, header[1:], body)


class TlsCryptWrap:
    """tls-crypt: AES-256-CTR + HMAC-SHA256 (SIV-like), fixed roles (reference §3.1, §3.2).

    The client is INVERSE (sends with keys[1]); `direction=KeyDirection.NORMAL` gives the
    server's view, for tests. Dynamic tls-crypt (reference §3.5) is this class over the
    EKM-derived 256 bytes XOR the original key, with its own counter and window."""

    __slots__ = (
        "_counter",
        "_in_auth",
        "_in_cipher",
        "_out_auth",
        "_out_cipher",
        "_replay",
        "overhead",
    )

    def __init__(
        self,
        key: StaticKey,
        *,
        direction: KeyDirection = KeyDirection.INVERSE,
        replay_window: ReplayWindowSettings = _DEFAULT_REPLAY_WINDOW,
        next_replay_id: int = 1,
        time: int | None = None,
    ) -> None:
        out_slot, in_slot = static_key_slices(key, direction)
        self._out_cipher = out_slot[:_TLS_CRYPT_KEY_SIZE]
        self._out_auth = out_slot[64 : 64 + 32]
        self._in_cipher = in_slot[:_TLS_CRYPT_KEY_SIZE]
        self._in_auth = in_slot[64 : 64 + 32]
        self._counter = _LongFormCounter(next_replay_id, time)
        self._replay = LongReplayWindow(replay_window.packets, replay_window.seconds)
        self.overhead = TLS_CRYPT_OVERHEAD

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        replay_id, time = self._counter.next(wall_time)
        clear = (
            bytes((encode_header(packet.opcode, packet.key_id),))
            + packet.session_id
            + _REPLAY.pack(replay_id, time)
        )
        sealed = tls_crypt_seal(
            cipher_key=self._out_cipher,
            auth_key=self._out_auth,
            clear=clear,
            plaintext=encode_control_body(packet),
        )
        return clear + sealed

    def unwrap(self, data: bytes, now: float) -> ControlPacket:
        clear_size = _HEADER_SIZE + _REPLAY_SIZE
        opcode, key_id = _split_header(data, clear_size + TLS_CRYPT_TAG_SIZE)
        clear = data[:clear_size]
        body = tls_crypt_open(
            cipher_key=self._in_cipher,
            auth_key=self._in_auth,
            clear=clear,
            sealed=data[clear_size:],
        )
        replay_id, time = _REPLAY.unpack_from(clear, _HEADER_SIZE)
        self._replay.check_and_record(replay_id, time, now)
        return decode_control_body(opcode, key_id, clear[1:_HEADER_SIZE], body)


_WKC_OPCODES = frozenset({Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, Opcode.P_CONTROL_WKC_V1})


class TlsCryptV2Wrap(TlsCryptWrap):
    """tls-crypt-v2, client side: tls-crypt with the client key Kc (reference §3.3, §3.4).

    `wrap` appends the wrapped client key WKc to P_CONTROL_HARD_RESET_CLIENT_V3 and
    P_CONTROL_WKC_V1 (the caller chooses those opcodes: V3 for the hard reset, WKC_V1 for
    sequence number 1 only when the server's reset asked for it, see
    `packet.early_negotiation_flags`). With `early_negotiation=True` (2.6's behaviour) the
    replay ids start at 0x0f000001, announcing that we can resend WKc (reference §1.9).
    Received packets are plain tls-crypt."""

    __slots__ = ("wkc_overhead", "wrapped_key")

    def __init__(
        self,
        key: StaticKey,
        wrapped_key: bytes,
        *,
        early_negotiation: bool = True,
        direction: KeyDirection = KeyDirection.INVERSE,
        replay_window: ReplayWindowSettings = _DEFAULT_REPLAY_WINDOW,
        next_replay_id: int | None = None,
        time: int | None = None,
    ) -> None:
        if not 2 < len(wrapped_key) <= _WKC_MAX:
            raise ConfigError("tls-crypt-v2 wrapped client key has a bad length")
        if int.from_bytes(wrapped_key[-2:], "big") != len(wrapped_key):
            raise ConfigError("tls-crypt-v2 wrapped client key: length field mismatch")
        if next_replay_id is None:
            next_replay_id = EARLY_NEG_START + 1 if early_negotiation else 1
        super().__init__(
            key,
            direction=direction,
            replay_window=replay_window,
            next_replay_id=next_replay_id,
            time=time,
        )
        self.wrapped_key = wrapped_key
        self.wkc_overhead = len(wrapped_key)

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        wire = super().wrap(packet, wall_time)
        if packet.opcode in _WKC_OPCODES:
            return wire + self.wrapped_key
        return wire


def make_wrap(
    protection: TlsAuth | TlsCrypt | TlsCryptV2 | None,
    digest: str,
    *,
    replay_window: ReplayWindowSettings = _DEFAULT_REPLAY_WINDOW,
) -> ControlChannelWrap:
    """The client's wrap for a session, from the config's `tls_protection` and `auth`."""
    if protection is None:
        return PlainWrap()
    if isinstance(protection, TlsAuth):
        return TlsAuthWrap(
            protection.key, protection.direction, digest, replay_window=replay_window
        )
    if isinstance(protection, TlsCryptV2):
        return TlsCryptV2Wrap(protection.key, protection.wrapped_key, replay_window=replay_window)
    return TlsCryptWrap(protection.key, replay_window=replay_window)


def authentication_failure_hint(
    protection: TlsAuth | TlsCrypt | TlsCryptV2 | None, failures: int
) -> str | None:
    """Plain words for `failures` control packets from the server that did not authenticate
    while none did: most likely the two sides do not share the key (or key direction)."""
    if protection is None or failures <= 0:
        return None
    packets = "1 packet" if failures == 1 else f"{failures} packets"
    if isinstance(protection, TlsAuth):
        return (
            f"{packets} from the server failed tls-auth authentication: are the tls-auth key "
            "and key-direction the same as the server's?"
        )
    if isinstance(protection, TlsCryptV2):
        return (
            f"{packets} from the server failed tls-crypt-v2 authentication: was our "
            "tls-crypt-v2 client key made from the server's key?"
        )
    return (
        f"{packets} from the server failed tls-crypt authentication: is the tls-crypt key the "
        "same as the server's?"
    )
