"""AEAD data packets (reference §6.2), ping (§6.7) and OCC (§6.8); framing: compression.py.

Wire layout (OpenVPN 2.6, tag first; crypto.c: openvpn_encrypt_aead / openvpn_decrypt_aead):

    P_DATA_V2: byte0 | peer_id[3] | replay_id[4] | tag[16] | ciphertext     AAD = first 8 bytes
    P_DATA_V1: byte0 |              replay_id[4] | tag[16] | ciphertext     AAD = replay_id
    nonce = replay_id[4] || implicit_iv[8]

The replay id starts at 1 per key state and direction and never wraps (at 0xffffffff sending
stops: renegotiate before, `should_renegotiate` turns true at 0xff000000). Receiving:
authenticate, then the replay check, then remove the framing. Both V1 and V2 are accepted
whatever we send.

This is the hot path: the AEAD objects are built once per key, headers are precomputed, and a
packet costs one AEAD call, one replay check and a few byte joins.
"""

from __future__ import annotations

import struct

from .aead import Aead, make_aead
from .compression import Decompression, framing
from .config.model import Compression
from .config.model import ReplayWindow as ReplayWindowSettings
from .errors import DecodeError, LocalProtocolError
from .kdf import AEAD_KEY_SIZES, DataChannelKeys
from .packet import KEY_ID_MASK, OPCODE_SHIFT, Opcode
from .replay import ReplayWindow

__all__ = [
    "MAX_PEER_ID",
    "OCC_EXIT",
    "OCC_EXIT_MESSAGE",
    "OCC_MAGIC",
    "PING_MAGIC",
    "RENEGOTIATE_AT_REPLAY_ID",
    "SUPPORTED_AEAD_CIPHERS",
    "DataChannelKey",
    "decode_occ",
    "is_ping",
    "overhead",
]

SUPPORTED_AEAD_CIPHERS = tuple(AEAD_KEY_SIZES)
AEAD_TAG_LENGTH = 16  # crypto.h: OPENVPN_AEAD_TAG_LENGTH
MAX_PEER_ID = 0xFFFFFF  # ssl_common.h: MAX_PEER_ID ("peer-id disabled")
MAX_REPLAY_ID = 0xFFFFFFFF  # packet_id.h: PACKET_ID_MAX (short form refuses to wrap)
RENEGOTIATE_AT_REPLAY_ID = 0xFF000000  # ssl.c: PACKET_ID_WRAP_TRIGGER

# ping.c: ping_string
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
# occ.c: occ_magic; then one OCC opcode byte
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
OCC_REQUEST = 0  # occ.h
OCC_REPLY = 1
OCC_EXIT = 6
OCC_EXIT_MESSAGE = OCC_MAGIC + bytes((OCC_EXIT,))

_U32 = struct.Struct("!I")
_V1 = int(Opcode.P_DATA_V1) << OPCODE_SHIFT
_V2 = int(Opcode.P_DATA_V2) << OPCODE_SHIFT


def is_ping(payload: bytes) -> bool:
    """True for the keepalive payload (after decryption and de-framing): drop it."""
    return payload == PING_MAGIC


def decode_occ(payload: bytes) -> tuple[int, bytes] | None:
    """(OCC opcode, arguments) if the payload is an OCC message, else None."""
    if len(payload) > len(OCC_MAGIC) and payload.startswith(OCC_MAGIC):
        return payload[len(OCC_MAGIC)], payload[len(OCC_MAGIC) + 1 :]
    return None


def overhead(*, peer_id: bool, compression: Compression) -> int:
    """Bytes a data packet has over its payload: header, replay id, tag, framing (at most)."""
    framing = 0 if compression is Compression.NONE else 1
    if compression in (Compression.STUB_V2, Compression.LZ4_V2):
        framing = 2  # only when the payload starts with 0x50 (never for IP)
    return (4 if peer_id else 1) + 4 + AEAD_TAG_LENGTH + framing


def _make_aead(cipher: str, key: bytes) -> Aead:
    return make_aead(cipher, key)  # aead.py: OpenSSL contexts kept across packets


# --------------------------------------------------------------------------- the key


class DataChannelKey:
    """One key state's data channel: one AEAD cipher, both directions, its replay window.

    `encrypt(payload) -> wire packet`; `decrypt(packet, now) -> payload` (an IP packet, the
    ping magic or an OCC message), raising AuthenticationError / ReplayError / DecodeError
    (CompressionError for compressed packets: see compression.py; `decompression` None
    refuses them all).
    Counters (`packets_sent`, `bytes_sent`, `packets_received`, `bytes_received`) count
    payloads (before framing) for reneg-bytes / reneg-pkts and statistics.
    """

    __slots__ = (
        "_deframe",
        "_frame",
        "_my_header",
        "_my_iv",
        "_next_replay_id",
        "_open",
        "_replay",
        "_seal",
        "_their_iv",
        "_v1_byte",
        "_v2_byte",
        "bytes_received",
        "bytes_sent",
        "cipher",
        "key_id",
        "packets_received",
        "packets_sent",
        "peer_id",
    )

    def __init__(
        self,
        *,
        cipher: str,
        keys: DataChannelKeys,
        key_id: int,
        peer_id: int | None,
        compression: Compression,
        replay_window: ReplayWindowSettings,
        decompression: Decompression | None = None,
    ) -> None:
        cipher = cipher.upper()
        if cipher not in AEAD_KEY_SIZES:
            raise ValueError(f"unsupported AEAD cipher {cipher!r}")
        size = AEAD_KEY_SIZES[cipher]
        if len(keys.my_cipher_key) != size or len(keys.their_cipher_key) != size:
            raise ValueError(f"{cipher} needs {size}-byte keys")
        if len(keys.my_implicit_iv) != 8 or len(keys.their_implicit_iv) != 8:
            raise ValueError("implicit IVs must be 8 bytes")
        if not 0 <= key_id <= KEY_ID_MASK:
            raise ValueError("key id out of range")
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise ValueError("peer id out of range")
        self.cipher = cipher
        self.key_id = key_id
        self.peer_id = peer_id
        self._seal = _make_aead(cipher, keys.my_cipher_key).seal
        self._open = _make_aead(cipher, keys.their_cipher_key).open
        self._my_iv = keys.my_implicit_iv
        self._their_iv = keys.their_implicit_iv
        self._v1_byte = _V1 | key_id
        self._v2_byte = _V2 | key_id
        if peer_id is None:
            self._my_header = bytes((self._v1_byte,))
        else:
            self._my_header = bytes((self._v2_byte,)) + peer_id.to_bytes(3, "big")
        self._frame, self._deframe = framing(compression, decompression)
        self._replay = ReplayWindow(replay_window.packets, replay_window.seconds)
        self._next_replay_id = 1
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_received = 0
        self.bytes_received = 0

    @property
    def should_renegotiate(self) -> bool:
        """True once our replay ids near exhaustion (OpenVPN renegotiates at 0xff000000)."""
        return self._next_replay_id >= RENEGOTIATE_AT_REPLAY_ID

    def encrypt(self, payload: bytes) -> bytes:
        """The full wire packet for one payload (an IP packet, ping or OCC message)."""
        replay_id = self._next_replay_id
        if replay_id > MAX_REPLAY_ID:
            raise LocalProtocolError("data channel replay ids exhausted: renegotiate")
        if not payload:
            raise ValueError("empty data payload")
        self._next_replay_id = replay_id + 1
        pid = _U32.pack(replay_id)
        header = self._my_header
        if self.peer_id is None:
            sealed = self._seal(pid + self._my_iv, pid, self._frame(payload))
            prefix = header + pid
        else:
            prefix = header + pid
            sealed = self._seal(pid + self._my_iv, prefix, self._frame(payload))
        self.packets_sent += 1
        self.bytes_sent += len(payload)
        return prefix + sealed  # sealed = tag || ciphertext

    def decrypt(self, packet: bytes, now: float) -> bytes:
        """The de-framed payload of a wire packet of this key state."""
        if not packet:
            raise DecodeError("empty data packet")
        byte0 = packet[0]
        if byte0 == self._v2_byte:
            start = 4
        elif byte0 == self._v1_byte:
            start = 1
        else:
            raise DecodeError(f"not a data packet of key {self.key_id}: byte0 {byte0:#04x}")
        body = start + 4 + AEAD_TAG_LENGTH
        if len(packet) <= body:
            raise DecodeError("data packet too short (missing payload)")
        pid = packet[start : start + 4]
        aad = packet[: body - AEAD_TAG_LENGTH] if start == 4 else pid
        # AuthenticationError if the tag does not verify
        plain = self._open(pid + self._their_iv, aad, packet[start + 4 : body], packet[body:])
        self._replay.check_and_record(_U32.unpack(pid)[0], now)
        payload = self._deframe(plain)
        self.packets_received += 1
        self.bytes_received += len(payload)
        return payload
