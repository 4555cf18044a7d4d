"""CBC+HMAC data packets in TLS mode (reference §6.3; crypto.c: openvpn_encrypt_v1 /
openvpn_decrypt_v1), for servers that do not negotiate an AEAD cipher.

Wire layout (the HMAC covers IV || ciphertext; the opcode and peer-id are not authenticated):

    P_DATA_V2: byte0 | peer_id[3] | HMAC[N] | IV[16] | AES-CBC(replay_id[4] || framed payload)
    P_DATA_V1: byte0 |              HMAC[N] | IV[16] | AES-CBC(replay_id[4] || framed payload)

The IV is random per packet (from the engine's `rng`); PKCS#7 pads the plaintext. Receiving:
HMAC (constant time) first, then decrypt, then the replay check on the id inside, then remove
the framing. Same surface and counters as `datachannel.DataChannelKey`, so `datakeys.DataKeys`
rotates either kind.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .cbc import CBC_KEY_SIZES, DIGEST_SIZES, IV_LENGTH, make_cbc_hmac
from .compression import Decompression, framing
from .config.model import Compression
from .config.model import ReplayWindow as ReplayWindowSettings
from .datachannel import MAX_PEER_ID, MAX_REPLAY_ID, RENEGOTIATE_AT_REPLAY_ID
from .errors import DecodeError, LocalProtocolError
from .kdf import CbcKeys
from .packet import KEY_ID_MASK, OPCODE_SHIFT, Opcode
from .replay import ReplayWindow

__all__ = ["SUPPORTED_CBC_CIPHERS", "SUPPORTED_DIGESTS", "CbcDataChannelKey", "cbc_overhead"]

SUPPORTED_CBC_CIPHERS = tuple(CBC_KEY_SIZES)
SUPPORTED_DIGESTS = tuple(DIGEST_SIZES)
REPLAY_ID_LENGTH = 4  # packet_id.h: the short form in TLS mode

_U32 = struct.Struct("!I")
_V1 = int(Opcode.P_DATA_V1) << OPCODE_SHIFT
_V2 = int(Opcode.P_DATA_V2) << OPCODE_SHIFT


def cbc_overhead(*, peer_id: bool, auth: str) -> int:
    """Bytes a CBC data packet has over its payload at most (padding a whole block)."""
    return (4 if peer_id else 1) + DIGEST_SIZES[auth.upper()] + IV_LENGTH + REPLAY_ID_LENGTH + 16


class CbcDataChannelKey:
    """One key state's CBC+HMAC data channel: a sealer, an opener, the replay window."""

    __slots__ = (
        "_deframe",
        "_frame",
        "_my_header",
        "_next_replay_id",
        "_open",
        "_replay",
        "_rng",
        "_seal",
        "_v1_byte",
        "_v2_byte",
        "auth",
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
        auth: str,
        keys: CbcKeys,
        key_id: int,
        peer_id: int | None,
        compression: Compression,
        replay_window: ReplayWindowSettings,
        rng: Callable[[int], bytes],
        decompression: Decompression | None = None,
    ) -> None:
        cipher, auth = cipher.upper(), auth.upper()
        if cipher not in CBC_KEY_SIZES:
            raise ValueError(f"unsupported CBC cipher {cipher!r}")
        if auth not in DIGEST_SIZES:
            raise ValueError(f"unsupported HMAC digest {auth!r}")
        if not 0 <= key_id <= KEY_ID_MASK:
            raise ValueError("key id out of range")
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise ValueError("peer id out of range")
        self.cipher = cipher
        self.auth = auth
        self.key_id = key_id
        self.peer_id = peer_id
        self._seal = make_cbc_hmac(cipher, auth, keys.my_cipher_key, keys.my_hmac_key).seal
        self._open = make_cbc_hmac(cipher, auth, keys.their_cipher_key, keys.their_hmac_key).open
        self._rng = rng
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
        iv = self._rng(IV_LENGTH)
        wire = self._seal(iv, _U32.pack(replay_id) + self._frame(payload))
        self.packets_sent += 1
        self.bytes_sent += len(payload)
        return self._my_header + wire

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
        plain = self._open(packet[start:])  # AuthenticationError if the HMAC does not verify
        if len(plain) <= REPLAY_ID_LENGTH:
            raise DecodeError("data packet too short (missing payload)")
        self._replay.check_and_record(_U32.unpack_from(plain)[0], now)
        payload = self._deframe(plain[REPLAY_ID_LENGTH:])
        self.packets_received += 1
        self.bytes_received += len(payload)
        return payload
