"""OpenVPN packet codecs: the opcode byte, plain control packets, early-negotiation TLVs.

Wire facts (reference §1.2, §1.4, §1.9; OpenVPN `ssl_pkt.h`, `ssl_pkt.c`, `reliable.c`):

    byte0 = opcode << 3 | key_id

    plain control packet (no tls-auth / tls-crypt):
      byte0 | session_id[8] | ack_count[1] | acks[4*n] | [remote_session_id[8] if n > 0]
            | [sequence_number[4] unless P_ACK_V1] | payload

The wrapping layers (`tls_wrap.py`) insert their fields after `byte0 | session_id`; they use
`encode_control_body` / `decode_control_body` for the part from `ack_count` on.

Data packets (P_DATA_V1/V2) are handled whole by `datachannel.py`; this module only names their
opcodes and decodes the first byte.

Naming: "sequence number" is the reliable layer's per-key-state message id (starts at 0);
"replay id" is the anti-replay counter of the wrapping layers (see `replay.py`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import DecodeError

__all__ = [
    "ACK_V1_MAX_ACKS",
    "CONTROL_MAX_ACKS",
    "EARLY_NEG_FLAG_RESEND_WKC",
    "EARLY_NEG_START",
    "KEY_ID_MASK",
    "OPCODE_SHIFT",
    "SESSION_ID_LENGTH",
    "TLV_TYPE_EARLY_NEG_FLAGS",
    "ControlPacket",
    "Opcode",
    "decode_control",
    "decode_control_body",
    "decode_header",
    "decode_tlvs",
    "early_negotiation_flags",
    "encode_control",
    "encode_control_body",
    "encode_header",
    "encode_tlvs",
    "is_control",
    "is_hard_reset",
]


class Opcode(enum.IntEnum):
    """Packet opcodes (ssl_pkt.h: P_CONTROL_HARD_RESET_CLIENT_V1 .. P_CONTROL_WKC_V1)."""

    P_CONTROL_HARD_RESET_CLIENT_V1 = 1  # key-method 1: rejected by 2.6
    P_CONTROL_HARD_RESET_SERVER_V1 = 2  # key-method 1: rejected by 2.6
    P_CONTROL_SOFT_RESET_V1 = 3
    P_CONTROL_V1 = 4
    P_ACK_V1 = 5
    P_DATA_V1 = 6
    P_CONTROL_HARD_RESET_CLIENT_V2 = 7
    P_CONTROL_HARD_RESET_SERVER_V2 = 8
    P_DATA_V2 = 9
    P_CONTROL_HARD_RESET_CLIENT_V3 = 10  # tls-crypt-v2: WKc appended
    P_CONTROL_WKC_V1 = 11  # tls-crypt-v2: like P_CONTROL_V1 with WKc appended


OPCODE_SHIFT = 3  # ssl_pkt.h: P_OPCODE_SHIFT
KEY_ID_MASK = 0x07  # ssl_pkt.h: P_KEY_ID_MASK
SESSION_ID_LENGTH = 8  # session_id.h: SID_SIZE
CONTROL_MAX_ACKS = 4  # ssl_pkt.h: CONTROL_SEND_ACK_MAX (acks piggy-backed on a control packet)
ACK_V1_MAX_ACKS = 8  # reliable.h: RELIABLE_ACK_SIZE (most acks any packet may carry)
MAX_SEQUENCE_NUMBER = 0xFFFFFFFF

# Early negotiation (ssl_pkt.h, reference §1.9), carried in a hard reset's payload.
EARLY_NEG_START = 0x0F000000  # ssl_pkt.h: the tls-crypt-v2 client's replay id counter start
TLV_TYPE_EARLY_NEG_FLAGS = 0x0001  # ssl_pkt.h
EARLY_NEG_FLAG_RESEND_WKC = 0x0001  # ssl_pkt.h

_BY_VALUE: dict[int, Opcode] = {int(op): op for op in Opcode}
_DATA_OPCODES = frozenset({Opcode.P_DATA_V1, Opcode.P_DATA_V2})
_HARD_RESETS = frozenset(
    {
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V1,
        Opcode.P_CONTROL_HARD_RESET_SERVER_V1,
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
        Opcode.P_CONTROL_HARD_RESET_SERVER_V2,
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V3,
    }
)
_ZERO_SESSION_ID = bytes(SESSION_ID_LENGTH)

_U32 = struct.Struct("!I")
_TLV = struct.Struct("!HH")


def is_control(opcode: Opcode) -> bool:
    """True for every opcode that goes through the control channel (all but P_DATA_V1/V2)."""
    return opcode not in _DATA_OPCODES


def is_hard_reset(opcode: Opcode) -> bool:
    return opcode in _HARD_RESETS


def encode_header(opcode: Opcode, key_id: int) -> int:
    """The first byte of a packet, as an int."""
    if not 0 <= key_id <= KEY_ID_MASK:
        raise ValueError(f"key id {key_id} out of range 0..7")
    return (int(opcode) << OPCODE_SHIFT) | key_id


def decode_header(data: bytes) -> tuple[Opcode, int]:
    """(opcode, key_id) from the first byte; DecodeError on empty data or an unknown opcode."""
    if not data:
        raise DecodeError("empty packet")
    byte0 = data[0]
    opcode = _BY_VALUE.get(byte0 >> OPCODE_SHIFT)
    if opcode is None:
        raise DecodeError(f"unknown opcode {byte0 >> OPCODE_SHIFT}")
    return opcode, byte0 & KEY_ID_MASK


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """One control-channel packet, independent of its wrapping.

    `session_id` is the sender's; `remote_session_id` (the receiver's, echoed) is present iff
    `acks` is non-empty; `sequence_number` is None only for P_ACK_V1, which has no payload.
    Construction validates all of this (ValueError), so a ControlPacket always encodes.
    """

    opcode: Opcode
    key_id: int
    session_id: bytes
    acks: tuple[int, ...]
    remote_session_id: bytes | None
    sequence_number: int | None
    payload: bytes = b""

    def __post_init__(self) -> None:
        problem = _validate(self)
        if problem is not None:
            raise ValueError(problem)


def _validate(p: ControlPacket) -> str | None:
    if not is_control(p.opcode):
        return f"{p.opcode.name} is not a control opcode"
    if not 0 <= p.key_id <= KEY_ID_MASK:
        return f"key id {p.key_id} out of range"
    if len(p.session_id) != SESSION_ID_LENGTH:
        return "session id must be 8 bytes"
    if p.session_id == _ZERO_SESSION_ID:
        return "all-zero session id"
    if len(p.acks) > ACK_V1_MAX_ACKS:
        return f"{len(p.acks)} acks, at most {ACK_V1_MAX_ACKS}"
    if any(not 0 <= a <= MAX_SEQUENCE_NUMBER for a in p.acks):
        return "ack out of range"
    if p.acks:
        if p.remote_session_id is None or len(p.remote_session_id) != SESSION_ID_LENGTH:
            return "acks need an 8-byte remote session id"
        if p.remote_session_id == _ZERO_SESSION_ID:
            return "all-zero remote session id"
    elif p.remote_session_id is not None:
        return "remote session id without acks"
    if p.opcode is Opcode.P_ACK_V1:
        if not p.acks:
            return "P_ACK_V1 without acks"
        if p.sequence_number is not None:
            return "P_ACK_V1 has no sequence number"
        if p.payload:
            return "P_ACK_V1 has no payload"
    elif p.sequence_number is None:
        return f"{p.opcode.name} needs a sequence number"
    elif not 0 <= p.sequence_number <= MAX_SEQUENCE_NUMBER:
        return "sequence number out of range"
    return None


def encode_control_body(p: ControlPacket) -> bytes:
    """The part after `byte0 | session_id`: ack_count, acks, [remote sid], [seq], payload."""
    parts = [bytes((len(p.acks),))]
    parts += [_U32.pack(a) for a in p.acks]
    if p.remote_session_id is not None:
        parts.append(p.remote_session_id)
    if p.sequence_number is not None:
        parts.append(_U32.pack(p.sequence_number))
    parts.append(p.payload)
    return b"".join(parts)


def encode_control(p: ControlPacket) -> bytes:
    """The plain (unwrapped) wire form of a control packet (reference §1.4)."""
    return bytes((encode_header(p.opcode, p.key_id),)) + p.session_id + encode_control_body(p)


def decode_control_body(
    opcode: Opcode, key_id: int, session_id: bytes, body: bytes | memoryview
) -> ControlPacket:
    """Inverse of `encode_control_body`, given the already-read header fields."""
    if not is_control(opcode):
        raise DecodeError(f"{opcode.name} is not a control packet")
    body = bytes(body)
    if not body:
        raise DecodeError("control packet truncated before the ack count")
    n = body[0]
    if n > ACK_V1_MAX_ACKS:
        raise DecodeError(f"control packet claims {n} acks, at most {ACK_V1_MAX_ACKS}")
    pos = 1
    need = pos + 4 * n + (SESSION_ID_LENGTH if n else 0)
    if len(body) < need:
        raise DecodeError("control packet truncated in the ack list")
    acks = tuple(_U32.unpack_from(body, pos + 4 * i)[0] for i in range(n))
    pos += 4 * n
    remote_session_id: bytes | None = None
    if n:
        remote_session_id = body[pos : pos + SESSION_ID_LENGTH]
        pos += SESSION_ID_LENGTH
    sequence_number: int | None = None
    if opcode is Opcode.P_ACK_V1:
        if not n:
            raise DecodeError("P_ACK_V1 without acks")
        if pos != len(body):
            raise DecodeError("P_ACK_V1 with trailing bytes")
        payload = b""
    else:
        if len(body) < pos + 4:
            raise DecodeError("control packet truncated before the sequence number")
        sequence_number = _U32.unpack_from(body, pos)[0]
        payload = body[pos + 4 :]
    try:
        return ControlPacket(
            opcode, key_id, session_id, acks, remote_session_id, sequence_number, payload
        )
    except ValueError as e:
        raise DecodeError(f"bad control packet: {e}") from None


def decode_control(data: bytes | memoryview) -> ControlPacket:
    """A plain (unwrapped) control packet; DecodeError on anything malformed."""
    data = bytes(data)
    opcode, key_id = decode_header(data)
    if len(data) < 1 + SESSION_ID_LENGTH:
        raise DecodeError("control packet truncated in the session id")
    return decode_control_body(opcode, key_id, data[1 : 1 + SESSION_ID_LENGTH], data[9:])


# --------------------------------------------------------------------------- early negotiation


def encode_tlvs(tlvs: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...]) -> bytes:
    """`type:u16 | length:u16 | value` for each item (reference §1.9)."""
    out = bytearray()
    for tlv_type, value in tlvs:
        if not 0 <= tlv_type <= 0xFFFF or len(value) > 0xFFFF:
            raise ValueError("TLV type or length out of range")
        out += _TLV.pack(tlv_type, len(value))
        out += value
    return bytes(out)


def decode_tlvs(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """Parse a hard reset's early-negotiation payload; DecodeError on a truncated TLV.

    As in OpenVPN 2.6 (ssl_pkt.c: parse_early_negotiation_tlvs), the caller skips unknown
    types; an empty payload is an empty list."""
    data = bytes(data)
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _TLV.size:
            raise DecodeError("early negotiation TLV truncated in its header")
        tlv_type, length = _TLV.unpack_from(data, pos)
        pos += _TLV.size
        if len(data) - pos < length:
            raise DecodeError("early negotiation TLV truncated in its value")
        out.append((tlv_type, data[pos : pos + length]))
        pos += length
    return out


def early_negotiation_flags(payload: bytes | memoryview) -> int:
    """The EARLY_NEG_FLAGS word of a hard reset payload (0 when absent).

    DecodeError if the payload is not a TLV list or the flags TLV is not 2 bytes long."""
    flags = 0
    for tlv_type, value in decode_tlvs(payload):
        if tlv_type == TLV_TYPE_EARLY_NEG_FLAGS:
            if len(value) != 2:
                raise DecodeError("EARLY_NEG_FLAGS TLV must be 2 bytes long")
            flags |= int.from_bytes(value, "big")
    return flags
