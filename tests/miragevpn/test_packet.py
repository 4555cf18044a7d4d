"""packet.py: opcode byte, plain control packets, early-negotiation TLVs."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.errors import DecodeError
from miragevpn.packet import (
    EARLY_NEG_FLAG_RESEND_WKC,
    TLV_TYPE_EARLY_NEG_FLAGS,
    ControlPacket,
    Opcode,
    decode_control,
    decode_header,
    decode_tlvs,
    early_negotiation_flags,
    encode_control,
    encode_tlvs,
    is_control,
)

# tests/unit_tests/openvpn/test_pkt.c (OpenVPN release/2.6): client_reset_v2_none,
# client_control_with_ack (truncated fixture), client_ack_none_random_id,
# client_control_none_random_id (reference §11.2).
CLIENT_RESET_V2_NONE = bytes.fromhex("386891923fa31034370000000000")
CLIENT_CONTROL_WITH_ACK = bytes.fromhex(
    "207819bf2ebcd19a450100000000eafebfa4418ae31b00000001160301"
)
CLIENT_ACK_NONE_RANDOM_ID = bytes.fromhex("28aeb9afe1f01d79c80100000000dd85db535623b02e")
CLIENT_ACK_123_NONE_RANDOM_ID = bytes.fromhex(
    "28aeb9afe1f01d79c803000000000000000100000002dd85db535623b02e"
)
CLIENT_CONTROL_NONE_RANDOM_ID = bytes.fromhex("20aeb9afe1f01d79c8010000000002")

SID = bytes.fromhex("0102030405060708")
THEIR_SID = bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_header_of_every_opcode() -> None:
    for op in Opcode:
        for key_id in range(8):
            assert decode_header(bytes(((op << 3) | key_id,))) == (op, key_id)


@pytest.mark.parametrize("byte0", [0x00, 0x07, 0x60, 0x61, 0xF8, 0xFF])
def test_header_rejects_unknown_opcodes(byte0: int) -> None:
    with pytest.raises(DecodeError):
        decode_header(bytes((byte0,)))


def test_header_rejects_empty() -> None:
    with pytest.raises(DecodeError):
        decode_header(b"")


def test_is_control() -> None:
    assert not is_control(Opcode.P_DATA_V1)
    assert not is_control(Opcode.P_DATA_V2)
    assert all(is_control(op) for op in Opcode if op not in (Opcode.P_DATA_V1, Opcode.P_DATA_V2))


def test_openvpn_client_reset_none() -> None:
    p = decode_control(CLIENT_RESET_V2_NONE)
    assert p == ControlPacket(
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
        0,
        bytes.fromhex("6891923fa3103437"),
        (),
        None,
        0,
        b"",
    )
    assert encode_control(p) == CLIENT_RESET_V2_NONE


def test_openvpn_control_with_ack() -> None:
    p = decode_control(CLIENT_CONTROL_WITH_ACK)
    assert p.opcode is Opcode.P_CONTROL_V1
    assert p.session_id == bytes.fromhex("7819bf2ebcd19a45")
    assert p.acks == (0,)
    assert p.remote_session_id == bytes.fromhex("eafebfa4418ae31b")
    assert p.sequence_number == 1
    assert p.payload == bytes.fromhex("160301")
    assert encode_control(p) == CLIENT_CONTROL_WITH_ACK


def test_openvpn_acks() -> None:
    p = decode_control(CLIENT_ACK_NONE_RANDOM_ID)
    assert p.opcode is Opcode.P_ACK_V1
    assert p.acks == (0,)
    assert p.remote_session_id == bytes.fromhex("dd85db535623b02e")
    assert p.sequence_number is None
    assert encode_control(p) == CLIENT_ACK_NONE_RANDOM_ID
    p3 = decode_control(CLIENT_ACK_123_NONE_RANDOM_ID)
    assert p3.acks == (0, 1, 2)
    assert encode_control(p3) == CLIENT_ACK_123_NONE_RANDOM_ID


def test_openvpn_malformed_control_without_remote_sid() -> None:
    with pytest.raises(DecodeError):
        decode_control(CLIENT_CONTROL_NONE_RANDOM_ID)


@pytest.mark.parametrize(
    "hex_packet",
    [
        "38" + "00" * 8 + "00" + "00000000",  # all-zero session id
        "28" + "01" * 8 + "00",  # P_ACK_V1 without acks
        "28" + "01" * 8 + "01" + "00000000" + "02" * 8 + "00",  # ack with a trailing byte
        "20" + "01" * 8 + "09" + "00000000" * 9 + "02" * 8 + "00000001",  # 9 acks
        "20" + "01" * 8 + "01" + "00000000" + "00" * 8 + "00000001",  # zero remote sid
        "20" + "01" * 8 + "00" + "000000",  # truncated sequence number
        "20" + "01" * 7,  # truncated session id
        "20" + "01" * 8,  # no ack count
        "30" + "01" * 8 + "00" + "00000001",  # P_DATA_V1 is not control
    ],
)
def test_malformed_control(hex_packet: str) -> None:
    with pytest.raises(DecodeError):
        decode_control(bytes.fromhex(hex_packet))


def test_constructor_rejects_inconsistent_packets() -> None:
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (1,), None, 1)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (), THEIR_SID, 1)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, (), None, None)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_ACK_V1, 0, SID, (), None, None)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_ACK_V1, 0, SID, (1,), THEIR_SID, 3)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_CONTROL_V1, 8, SID, (), None, 1)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_CONTROL_V1, 0, SID, tuple(range(9)), THEIR_SID, 1)
    with pytest.raises(ValueError):
        ControlPacket(Opcode.P_DATA_V2, 0, SID, (), None, 1)


session_ids = st.binary(min_size=8, max_size=8).filter(lambda b: any(b))
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def control_packets(draw: st.DrawFn) -> ControlPacket:
    opcode = draw(st.sampled_from([op for op in Opcode if is_control(op)]))
    acks = tuple(draw(st.lists(u32, min_size=opcode is Opcode.P_ACK_V1, max_size=8)))
    remote = draw(session_ids) if acks else None
    if opcode is Opcode.P_ACK_V1:
        return ControlPacket(opcode, draw(st.integers(0, 7)), draw(session_ids), acks, remote, None)
    return ControlPacket(
        opcode,
        draw(st.integers(0, 7)),
        draw(session_ids),
        acks,
        remote,
        draw(u32),
        draw(st.binary(max_size=64)),
    )


@given(control_packets())
def test_control_round_trip(p: ControlPacket) -> None:
    assert decode_control(encode_control(p)) == p


@given(st.binary(max_size=120))
def test_decode_control_hostile(data: bytes) -> None:
    try:
        p = decode_control(data)
    except DecodeError:
        return
    assert encode_control(p) == data  # what decodes is exactly what it encodes back to


@given(st.binary(max_size=3))
def test_decode_header_hostile(data: bytes) -> None:
    try:
        op, key_id = decode_header(data)
    except DecodeError:
        return
    assert data[0] == (op << 3) | key_id


def test_early_negotiation_tlv() -> None:
    # the server's stateless reset payload for a cookie-capable tls-crypt-v2 client
    # (reference §1.9; OpenVPN ssl_pkt.c: tls_reset_standalone with EARLY_NEG_FLAG_RESEND_WKC)
    payload = bytes.fromhex("000100020001")
    assert decode_tlvs(payload) == [(TLV_TYPE_EARLY_NEG_FLAGS, b"\x00\x01")]
    assert early_negotiation_flags(payload) == EARLY_NEG_FLAG_RESEND_WKC
    assert encode_tlvs([(1, b"\x00\x01")]) == payload
    assert early_negotiation_flags(b"") == 0
    assert early_negotiation_flags(bytes.fromhex("00070003aabbcc")) == 0  # unknown type skipped


@pytest.mark.parametrize("hex_payload", ["00", "000100", "00010003aabb", "000100010f"])
def test_early_negotiation_malformed(hex_payload: str) -> None:
    with pytest.raises(DecodeError):
        early_negotiation_flags(bytes.fromhex(hex_payload))


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=5))
def test_tlv_round_trip(tlvs: list[tuple[int, bytes]]) -> None:
    assert decode_tlvs(encode_tlvs(tlvs)) == tlvs


@given(st.binary(max_size=40))
def test_tlv_hostile(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        early_negotiation_flags(data)


control_byte0 = st.sampled_from(
    [(op << 3) | kid for op in Opcode if is_control(op) for kid in (0, 1, 7)]
)


@given(control_byte0, st.binary(min_size=8, max_size=8), st.integers(0, 12), st.binary(max_size=90))
def test_decode_control_hostile_plausible_headers(
    byte0: int, sid: bytes, ack_count: int, rest: bytes
) -> None:
    """Bytes that get past the opcode and session id, so the ack and sequence parsing is hit."""
    data = bytes([byte0]) + sid + bytes([ack_count]) + rest
    try:
        p = decode_control(data)
    except DecodeError:
        return
    assert encode_control(p) == data
