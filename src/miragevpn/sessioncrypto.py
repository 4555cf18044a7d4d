"""What the client needs from key-method 2, key derivation and the AEAD data channel.

Interim home: the codec modules `keymethod.py`, `kdf.py` and `datachannel.py` (another
engineer's) had not landed when the client needed them; this module holds the minimal client
side of each, written from openvpn-protocol.md §4 (key method 2, OCC string, peer-info), §5
(PRF / EKM, key2 slices) and §6.2/§6.6/§6.7 (AEAD data packets, compression framing, ping).
When those modules land, this one should shrink to the glue.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .config.model import Compression, Config, ReplayWindow, TlsAuth, Transport
from .errors import AuthenticationError, DecodeError, LocalProtocolError
from .packet import Opcode
from .replay import ReplayWindow as DataReplayWindow

# IV_PROTO bits we implement (ssl.h; reference §4.4): DATA_V2 | REQUEST_PUSH | TLS_KEY_EXPORT |
# CC_EXIT_NOTIFY.
IV_PROTO_DATA_V2 = 2
IV_PROTO_REQUEST_PUSH = 4
IV_PROTO_TLS_KEY_EXPORT = 8
IV_PROTO_CC_EXIT_NOTIFY = 128
IV_PROTO_PRF_ONLY = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_CC_EXIT_NOTIFY  # 134
IV_PROTO = IV_PROTO_PRF_ONLY | IV_PROTO_TLS_KEY_EXPORT  # 142
IV_VER = "2.6.0"  # informational for the server; we speak 2.6's protocol
IV_MTU = 1600

KEY_METHOD_2 = 2
_PRE_MASTER = 48
_RANDOM = 32
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

# ping.c: ping_string; occ.c: occ_magic
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
OCC_EXIT = 6

EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"  # ssl.c: EXPORT_KEY_DATA_LABEL
KEY2_SIZE = 256

AEAD_CIPHERS: dict[str, int] = {  # name → key size
    "AES-128-GCM": 16,
    "AES-192-GCM": 24,
    "AES-256-GCM": 32,
    "CHACHA20-POLY1305": 32,
}
_TAG = 16
_IMPLICIT_IV = 8
_MAX_PACKET_ID = 0xFFFFFFFF


# --------------------------------------------------------------------------- key method 2


@dataclass(frozen=True, slots=True)
class KeySource:
    """Our random material of one key-method-2 message (client side)."""

    pre_master: bytes
    random1: bytes
    random2: bytes


@dataclass(frozen=True, slots=True)
class MyKeyMethod:
    encoded: bytes
    source: KeySource


@dataclass(frozen=True, slots=True)
class TheirKeyMethod:
    random1: bytes
    random2: bytes
    options: str


def _string(value: bytes | None) -> bytes:
    """u16 length (NUL included) || bytes || NUL; empty or absent → length 0 (§4.2)."""
    if not value:
        return _U16.pack(0)
    return _U16.pack(len(value) + 1) + value + b"\x00"


def occ_options_string(config: Config, transport: Transport) -> str:
    """The OCC string a 2.6 client without `cipher` sends (§4.3; mismatches only warn)."""
    proto = "UDPv4" if transport is Transport.UDP else "TCPv4_CLIENT"
    items = ["V4", "dev-type tun", "link-mtu 1541", f"tun-mtu {config.tun_mtu}", f"proto {proto}"]
    protection = config.tls_protection
    if isinstance(protection, TlsAuth) and protection.direction is not None:
        items.append(f"keydir {int(protection.direction)}")
    items += [f"auth {config.auth}", "keysize 128"]
    if isinstance(protection, TlsAuth):
        items.append("tls-auth")
    items += ["key-method 2", "tls-client"]
    return ",".join(items)


def peer_info(config: Config, *, tls_ekm: bool = True) -> str:
    ciphers = [c.upper() for c in config.data_ciphers]
    lines = [f"IV_VER={IV_VER}", "IV_PLAT=linux", "IV_TCPNL=1", f"IV_MTU={IV_MTU}"]
    if "AES-128-GCM" in ciphers and "AES-256-GCM" in ciphers:
        lines.append("IV_NCP=2")
    lines.append("IV_CIPHERS=" + ":".join(ciphers))
    lines.append(f"IV_PROTO={IV_PROTO if tls_ekm else IV_PROTO_PRF_ONLY}")
    lines += ["IV_LZO_STUB=1", "IV_COMP_STUB=1", "IV_COMP_STUBv2=1"]
    return "".join(line + "\n" for line in lines)


def my_key_method(
    config: Config,
    rng: Callable[[int], bytes],
    transport: Transport,
    *,
    username: str | None,
    password: bytes | None,
    tls_ekm: bool = True,
) -> MyKeyMethod:
    """The client's key-method-2 message (§4.2), with fresh randoms from `rng`."""
    source = KeySource(rng(_PRE_MASTER), rng(_RANDOM), rng(_RANDOM))
    user = username.encode("utf-8") if username is not None else None
    encoded = b"".join(
        [
            b"\x00\x00\x00\x00",
            bytes((KEY_METHOD_2,)),
            source.pre_master,
            source.random1,
            source.random2,
            _string(occ_options_string(config, transport).encode("ascii")),
            _string(user if username is not None else None),
            _string(password if username is not None else None),
            _string(peer_info(config, tls_ekm=tls_ekm).encode("ascii")),
        ]
    )
    return MyKeyMethod(encoded, source)


def _read_string(data: bytes, position: int) -> tuple[bytes, int] | None:
    if len(data) < position + 2:
        return None
    (length,) = _U16.unpack_from(data, position)
    position += 2
    if len(data) < position + length:
        return None
    value = data[position : position + length]
    if length and value[-1] != 0:
        raise DecodeError("key-method-2 string not NUL-terminated")
    return value[:-1], position + length


def decode_their_key_method(data: bytes) -> tuple[TheirKeyMethod, int] | None:
    """The server's key-method-2 message at the start of `data`, and its length; None while
    incomplete. A 2.6 server writes: 4 zero bytes, method, random1, random2, options,
    and empty username, password and peer-info strings."""
    head = 4 + 1 + 2 * _RANDOM
    if len(data) < head:
        return None
    if data[:4] != b"\x00\x00\x00\x00":
        raise DecodeError("server key-method-2 message does not start with 4 zero bytes")
    if data[4] & 0x0F != KEY_METHOD_2:
        raise DecodeError(f"server uses key method {data[4] & 0x0F}, not 2")
    random1 = data[5 : 5 + _RANDOM]
    random2 = data[5 + _RANDOM : head]
    position = head
    options_read = _read_string(data, position)
    if options_read is None:
        return None
    options, position = options_read
    for _ in range(3):  # username, password, peer-info
        item = _read_string(data, position)
        if item is None:
            return None
        position = item[1]
    text = options.decode("ascii", "replace")
    return TheirKeyMethod(random1, random2, text), position


# --------------------------------------------------------------------------- key derivation


def _p_hash(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = b""
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return out[:length]


def tls1_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.0 PRF (RFC 2246 §5): P_MD5(S1) XOR P_SHA1(S2), halves overlapping if odd."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], seed, length)
    sha1 = _p_hash("sha1", secret[len(secret) - half :], seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha1, strict=True))


def prf_key2(
    mine: KeySource, theirs: TheirKeyMethod, my_session_id: bytes, their_session_id: bytes
) -> bytes:
    """OpenVPN's PRF key expansion (§5.2) from the client's point of view."""
    master = tls1_prf(mine.pre_master, b"OpenVPN master secret" + mine.random1 + theirs.random1, 48)
    seed = (
        b"OpenVPN key expansion" + mine.random2 + theirs.random2 + my_session_id + their_session_id
    )
    return tls1_prf(master, seed, KEY2_SIZE)


class _NegotiatedKeyState(Protocol):
    @property
    def key_source(self) -> KeySource: ...
    @property
    def their_key_method(self) -> object: ...
    @property
    def tls(self) -> _Exporter: ...


class _Exporter(Protocol):
    def export_keying_material(self, label: bytes, length: int) -> bytes: ...


def derive_key2(
    key_state: _NegotiatedKeyState, my_session_id: bytes, their_session_id: bytes, ekm: bool
) -> bytes:
    """The 256-byte key2 of a negotiated key state: TLS-EKM or the PRF."""
    if ekm:
        return key_state.tls.export_keying_material(EKM_LABEL, KEY2_SIZE)
    theirs = key_state.their_key_method
    if not isinstance(theirs, TheirKeyMethod):
        raise LocalProtocolError("key derivation before the server's key-method-2 message")
    return prf_key2(key_state.key_source, theirs, my_session_id, their_session_id)


# --------------------------------------------------------------------------- data channel


class _DataKey:
    """One key id's AEAD keys, counters and replay window (§5.1 slices, §6.2 format)."""

    __slots__ = ("_decrypt", "_encrypt", "_my_iv", "_replay", "_their_iv", "my_packet_id")

    def __init__(self, cipher: str, key2: bytes, replay_window: ReplayWindow) -> None:
        size = AEAD_CIPHERS[cipher]
        aead = ChaCha20Poly1305 if cipher == "CHACHA20-POLY1305" else AESGCM
        self._encrypt = aead(key2[0:size])  # keys[0] cipher: client → server
        self._my_iv = key2[64 : 64 + _IMPLICIT_IV]  # keys[0] hmac slot
        self._decrypt = aead(key2[128 : 128 + size])  # keys[1] cipher: server → client
        self._their_iv = key2[192 : 192 + _IMPLICIT_IV]
        self._replay = DataReplayWindow(replay_window.packets, replay_window.seconds)
        self.my_packet_id = 0

    def seal(self, header: bytes, payload: bytes, v2: bool) -> bytes:
        if self.my_packet_id >= _MAX_PACKET_ID:
            raise LocalProtocolError("data channel packet ids exhausted; renegotiate")
        self.my_packet_id += 1
        packet_id = _U32.pack(self.my_packet_id)
        aad = header + packet_id if v2 else packet_id
        sealed = self._encrypt.encrypt(packet_id + self._my_iv, payload, aad)
        return header + packet_id + sealed[-_TAG:] + sealed[:-_TAG]

    def open(self, packet: bytes, v2: bool, now: float) -> bytes:
        start = 4 if v2 else 1
        if len(packet) < start + 4 + _TAG + 1:
            raise DecodeError("data packet too short")
        packet_id = packet[start : start + 4]
        aad = packet[: start + 4] if v2 else packet_id
        tag = packet[start + 4 : start + 4 + _TAG]
        try:
            payload = self._decrypt.decrypt(
                packet_id + self._their_iv, packet[start + 4 + _TAG :] + tag, aad
            )
        except InvalidTag:
            raise AuthenticationError("data packet fails authentication") from None
        self._replay.check_and_record(_U32.unpack(packet_id)[0], now)
        return payload


class DataPath:
    """The data channel of an established session: keys by key id, framing, ping."""

    __slots__ = (
        "_compression",
        "_keys",
        "_peer_id",
        "_pending",
        "_replay_window",
        "cipher",
        "send_key_id",
    )

    def __init__(
        self,
        cipher: str,
        compression: Compression,
        peer_id: int | None,
        replay_window: ReplayWindow,
    ) -> None:
        self.cipher = cipher
        self._compression = compression
        self._peer_id = peer_id
        self._replay_window = replay_window
        self._keys: dict[int, _DataKey] = {}
        self.send_key_id = -1
        self._pending: tuple[int, float] | None = None

    @classmethod
    def create(
        cls,
        *,
        cipher: str,
        compression: Compression,
        peer_id: int | None,
        replay_window: ReplayWindow,
    ) -> DataPath:
        name = cipher.upper()
        if name not in AEAD_CIPHERS:
            raise LocalProtocolError(f"data cipher {cipher} is not supported (AEAD only)")
        return cls(name, compression, peer_id, replay_window)

    @property
    def key_ids(self) -> frozenset[int]:
        return frozenset(self._keys)

    def add_key(self, key_id: int, key2: bytes, *, send_from: float | None = None) -> None:
        """Install a key id; we send with it at once, or from `send_from` (renegotiation)."""
        self._keys[key_id] = _DataKey(self.cipher, key2, self._replay_window)
        if send_from is None or self.send_key_id < 0:
            self.send_key_id = key_id
            self._pending = None
        else:
            self._pending = (key_id, send_from)

    def drop_key(self, key_id: int) -> None:
        if key_id != self.send_key_id:
            self._keys.pop(key_id, None)

    def _header(self, key_id: int) -> tuple[bytes, bool]:
        if self._peer_id is None:
            return bytes(((int(Opcode.P_DATA_V1) << 3) | key_id,)), False
        return bytes(((int(Opcode.P_DATA_V2) << 3) | key_id,)) + self._peer_id.to_bytes(
            3, "big"
        ), True

    def encrypt(self, ip_packet: bytes, now: float = 0.0) -> bytes:
        pending = self._pending
        if pending is not None and now >= pending[1]:
            self.send_key_id, self._pending = pending[0], None
        key_id = self.send_key_id
        header, v2 = self._header(key_id)
        return self._keys[key_id].seal(header, self._frame(ip_packet), v2)

    def encrypt_ping(self) -> bytes:
        return self.encrypt(PING_MAGIC)

    def encrypt_occ_exit(self) -> bytes:
        return self.encrypt(OCC_MAGIC + bytes((OCC_EXIT,)))

    def decrypt(self, packet: bytes, now: float) -> bytes | None:
        """The IP packet in a data packet; None for a ping or an OCC message."""
        key = self._keys.get(packet[0] & 7)
        if key is None:
            raise DecodeError("data packet for an unknown key id")
        payload = self._deframe(key.open(packet, packet[0] >> 3 == int(Opcode.P_DATA_V2), now))
        if payload == PING_MAGIC or payload.startswith(OCC_MAGIC):
            return None
        return payload

    # ------------------------------------------------------------------ framing (§6.6)

    def _frame(self, payload: bytes) -> bytes:
        compression = self._compression
        if compression is Compression.NONE:
            return payload
        if compression in (Compression.LZO_NO, Compression.LZO):
            return b"\xfa" + payload
        if compression in (Compression.STUB, Compression.LZ4):
            return b"\xfb" + payload[1:] + payload[:1]
        if payload[:1] == b"\x50":  # STUB_V2 / LZ4_V2: escape a leading 0x50
            return b"\x50\x00" + payload
        return payload

    def _deframe(self, payload: bytes) -> bytes:
        compression = self._compression
        if compression is Compression.NONE:
            return payload
        if compression in (Compression.LZO_NO, Compression.LZO):
            if payload[:1] != b"\xfa":
                raise DecodeError("compressed (or unframed) data packet: not supported")
            return payload[1:]
        if compression in (Compression.STUB, Compression.LZ4):
            if payload[:1] != b"\xfb":
                raise DecodeError("compressed (or unframed) data packet: not supported")
            return payload[-1:] + payload[1:-1]
        if payload[:1] == b"\x50":
            if payload[1:2] != b"\x00":
                raise DecodeError("compressed data packet: not supported")
            return payload[2:]
        return payload
