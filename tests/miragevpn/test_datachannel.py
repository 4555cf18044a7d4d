"""datachannel.py: AEAD data packets, framing, ping/OCC, against OpenVPN's vector."""

from __future__ import annotations

import contextlib

import lz4.block
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.compression import Decompression
from miragevpn.config.model import Compression, ReplayWindow
from miragevpn.datachannel import (
    OCC_EXIT,
    OCC_EXIT_MESSAGE,
    PING_MAGIC,
    SUPPORTED_AEAD_CIPHERS,
    DataChannelKey,
    decode_occ,
    is_ping,
    overhead,
)
from miragevpn.errors import (
    AuthenticationError,
    CompressionRefused,
    DecodeError,
    LocalProtocolError,
    ReplayError,
)
from miragevpn.kdf import DataChannelKeys, client_data_keys

# master tests/unit_tests/openvpn/test_ssl.c: create_key() and
# test_data_channel_known_vectors_shortpktid (reference §11.5): keydata[i] = key[i % 32] ^ i,
# used BIDIRECTIONAL (keys[0] both ways), AES-256-GCM, packet id 1, header 07 00 00 17.
_BASE = b"abcdefgh01234567ABCDEFGHjkuchenl"
VECTOR_KEY2 = bytes(_BASE[i % 32] ^ i for i in range(256))
VECTOR_PLAINTEXT = b"The quick little fox jumps over the bureaucratic hurdles"
VECTOR_TAG = bytes.fromhex("1fdd908f0e9dc25e79d832020d58e73f")
VECTOR_CT_10_16 = bytes.fromhex("a82e6b1706d9")

NOW = 1000.0


def bidirectional_keys(key2: bytes, size: int = 32) -> DataChannelKeys:
    return DataChannelKeys(key2[:size], key2[64:72], key2[:size], key2[64:72])


def make(
    keys: DataChannelKeys,
    cipher: str = "AES-256-GCM",
    peer_id: int | None = 7,
    compression: Compression = Compression.NONE,
    key_id: int = 1,
) -> DataChannelKey:
    return DataChannelKey(
        cipher=cipher,
        keys=keys,
        key_id=key_id,
        peer_id=peer_id,
        compression=compression,
        replay_window=ReplayWindow(),
    )


def mirror(keys: DataChannelKeys) -> DataChannelKeys:
    """The server's view of the same keys."""
    return DataChannelKeys(
        keys.their_cipher_key, keys.their_implicit_iv, keys.my_cipher_key, keys.my_implicit_iv
    )


def test_vector_derived_values() -> None:
    assert VECTOR_KEY2[:32] == bytes.fromhex(
        "616361676163616f3838383838383838515351575153515f72726f7874787073"
    )
    assert VECTOR_KEY2[64:72] == bytes.fromhex("212321272123212f")


def test_openvpn_known_vector_tag_first_layout() -> None:
    key = make(bidirectional_keys(VECTOR_KEY2))
    # OpenVPN's test writes the stand-in header 07 00 00 17 where P_DATA_V2 has
    # opcode|key id and peer id; substitute it to reproduce the vector's AAD exactly.
    key._my_header = bytes.fromhex("07000017")  # test-only substitution
    wire = key.encrypt(VECTOR_PLAINTEXT)
    assert wire[:8] == bytes.fromhex("0700001700000001")
    assert wire[8:24] == VECTOR_TAG
    assert wire[24 + 10 : 24 + 16] == VECTOR_CT_10_16
    assert len(wire) == 24 + len(VECTOR_PLAINTEXT)


def test_known_vector_decrypts_as_p_data_v2() -> None:
    """The same ciphertext, with a real P_DATA_V2 header, authenticates under its own AAD."""
    keys = bidirectional_keys(VECTOR_KEY2)
    aad = bytes.fromhex("4f00001700000001")  # P_DATA_V2, key id 7, peer id 0x17, packet id 1
    sealed = AESGCM(keys.my_cipher_key).encrypt(
        bytes.fromhex("00000001") + keys.my_implicit_iv, VECTOR_PLAINTEXT, aad
    )
    assert sealed[10:16] == VECTOR_CT_10_16
    wire = aad + sealed[-16:] + sealed[:-16]
    receiver = make(keys, key_id=7)
    assert receiver.decrypt(wire, NOW) == VECTOR_PLAINTEXT


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD_CIPHERS)
@pytest.mark.parametrize("peer_id", [None, 0, 0xFFFFFE])
def test_round_trip_every_cipher(cipher: str, peer_id: int | None) -> None:
    keys = client_data_keys(bytes(range(256)), cipher)
    client = make(keys, cipher, peer_id)
    server = make(mirror(keys), cipher, peer_id)
    for i, size in enumerate((1, 20, 64, 1400)):
        payload = bytes([i + 1]) * size
        wire = client.encrypt(payload)
        assert len(wire) == len(payload) + overhead(
            peer_id=peer_id is not None, compression=Compression.NONE
        )
        start = 1 if peer_id is None else 4
        assert wire[start : start + 4] == (i + 1).to_bytes(4, "big")  # replay ids from 1
        assert server.decrypt(wire, NOW) == payload
    assert (client.packets_sent, client.bytes_sent) == (4, 1 + 20 + 64 + 1400)
    assert (server.packets_received, server.bytes_received) == (4, 1 + 20 + 64 + 1400)
    if peer_id is None:
        assert wire[0] == 0x31
    else:
        assert wire[:4] == bytes([0x49]) + peer_id.to_bytes(3, "big")


def test_p_data_v1_aad_is_only_the_packet_id() -> None:
    keys = client_data_keys(bytes(range(256)), "AES-128-GCM")
    client = make(keys, "AES-128-GCM", None, key_id=0)
    server = make(mirror(keys), "AES-128-GCM", None, key_id=0)
    wire = client.encrypt(b"payload")
    assert wire[0] == 0x30
    # the opcode byte is not authenticated in P_DATA_V1: OpenVPN reads it only to dispatch
    sealed = AESGCM(keys.my_cipher_key).encrypt(
        wire[1:5] + keys.my_implicit_iv, b"payload", wire[1:5]
    )
    assert wire[5:21] == sealed[-16:] and wire[21:] == sealed[:-16]
    assert server.decrypt(wire, NOW) == b"payload"


def test_tampering_replay_and_wrong_key() -> None:
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    client = make(keys)
    server = make(mirror(keys))
    wire = client.encrypt(b"hello world")
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        with pytest.raises(DecodeError):
            server.decrypt(bytes(bad), NOW)
    assert server.decrypt(wire, NOW) == b"hello world"
    with pytest.raises(ReplayError):
        server.decrypt(wire, NOW)
    with pytest.raises(AuthenticationError):  # our own packet: the other direction's key
        client.decrypt(client.encrypt(b"x"), NOW)
    with pytest.raises(DecodeError):
        server.decrypt(wire[:25], NOW)  # no payload


def test_wrong_key_id_is_refused() -> None:
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    wire = make(keys, key_id=1).encrypt(b"x")
    with pytest.raises(DecodeError):
        make(mirror(keys), key_id=2).decrypt(wire, NOW)


def test_refuses_to_wrap_and_asks_for_renegotiation() -> None:
    key = make(client_data_keys(bytes(range(256)), "AES-256-GCM"))
    key._next_replay_id = 0xFF000000  # skip four billion packets
    assert key.should_renegotiate
    key._next_replay_id = 0xFFFFFFFF
    key.encrypt(b"last")
    with pytest.raises(LocalProtocolError):
        key.encrypt(b"one too many")


@pytest.mark.parametrize(
    ("compression", "payload", "framed"),
    [
        (Compression.NONE, b"\x45abc", b"\x45abc"),
        (Compression.LZO_NO, b"\x45abc", b"\xfa\x45abc"),
        (Compression.LZO, b"\x45abc", b"\xfa\x45abc"),
        (Compression.STUB, b"\x45abc", b"\xfbabc\x45"),
        (Compression.STUB, b"\x45", b"\xfb\x45"),
        (Compression.LZ4, b"\x60abc", b"\xfbabc\x60"),
        (Compression.STUB_V2, b"\x45abc", b"\x45abc"),
        (Compression.STUB_V2, b"\x50abc", b"\x50\x00\x50abc"),
        (Compression.LZ4_V2, b"\x50", b"\x50\x00\x50"),
    ],
)
def test_compression_framing(compression: Compression, payload: bytes, framed: bytes) -> None:
    """Framing bytes from reference §6.6 (comp.h, compstub.c)."""
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    client = make(keys, compression=compression)
    server = make(mirror(keys), compression=compression)
    wire = client.encrypt(payload)
    plain = server._open(  # look inside the envelope: nonce, AAD, tag, ciphertext
        wire[4:8] + keys.my_implicit_iv, wire[:8], wire[8:24], wire[24:]
    )
    assert plain == framed
    assert server.decrypt(wire, NOW) == payload


def _seal_raw(keys: DataChannelKeys, replay_id: int, plain: bytes) -> bytes:
    """A packet from the server with arbitrary framed plaintext (P_DATA_V2, key 1, peer 7)."""
    head = bytes.fromhex("49000007") + replay_id.to_bytes(4, "big")
    sealed = AESGCM(keys.their_cipher_key).encrypt(
        replay_id.to_bytes(4, "big") + keys.their_implicit_iv, plain, head
    )
    return head + sealed[-16:] + sealed[:-16]


@pytest.mark.parametrize(
    ("compression", "plain", "expected"),
    [
        (Compression.LZO_NO, b"\xfa\x45", b"\x45"),
        (Compression.LZO_NO, b"\x66\x00\x01", None),  # real LZO: dropped
        (Compression.LZO_NO, b"\x45", None),
        (Compression.STUB, b"\xfb", b""),
        (Compression.STUB, b"\x69abc", None),  # LZ4 in swap mode
        (Compression.STUB, b"\xfa\x45", None),
        (Compression.STUB_V2, b"\x50\x00\x50x", b"\x50x"),
        (Compression.STUB_V2, b"\x50\x0a\x50x", b"\x50x"),  # 2.6's writer quirk
        (Compression.STUB_V2, b"\x50\x01lz4", None),
        (Compression.STUB_V2, b"\x50", None),
        (Compression.NONE, b"\xfa\x45", b"\xfa\x45"),
    ],
)
def test_received_framing(compression: Compression, plain: bytes, expected: bytes | None) -> None:
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    client = make(keys, compression=compression)
    wire = _seal_raw(keys, 1, plain)
    if expected is None:
        with pytest.raises(DecodeError):
            client.decrypt(wire, NOW)
    else:
        assert client.decrypt(wire, NOW) == expected


def test_ping_and_occ() -> None:
    assert is_ping(bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748"))  # ping.c: ping_string
    assert not is_ping(PING_MAGIC + b"\x00")
    assert bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c06") == OCC_EXIT_MESSAGE  # occ.c
    assert decode_occ(OCC_EXIT_MESSAGE) == (OCC_EXIT, b"")
    assert decode_occ(OCC_EXIT_MESSAGE[:-1]) is None
    assert decode_occ(b"\x45" * 20) is None
    keys = client_data_keys(bytes(range(256)), "CHACHA20-POLY1305")
    client = make(keys, "CHACHA20-POLY1305", compression=Compression.STUB)
    server = make(mirror(keys), "CHACHA20-POLY1305", compression=Compression.STUB)
    assert is_ping(server.decrypt(client.encrypt(PING_MAGIC), NOW))


def test_constructor_checks() -> None:
    keys = client_data_keys(bytes(range(256)), "AES-128-GCM")
    with pytest.raises(ValueError):
        make(keys, "AES-256-GCM")  # 16-byte keys for a 32-byte cipher
    with pytest.raises(ValueError):
        make(keys, "BF-CBC")
    with pytest.raises(ValueError):
        make(keys, "AES-128-GCM", peer_id=0x1000000)
    with pytest.raises(ValueError):
        make(keys, "AES-128-GCM").encrypt(b"")


@given(st.binary(max_size=80), st.sampled_from(list(Compression)))
def test_decrypt_hostile(data: bytes, compression: Compression) -> None:
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    with contextlib.suppress(DecodeError):
        make(keys, compression=compression).decrypt(data, NOW)


@given(st.binary(min_size=1, max_size=40), st.sampled_from(list(Compression)))
def test_authenticated_hostile_framing(plain: bytes, compression: Compression) -> None:
    """A peer with the keys sends any framed plaintext: a payload or a DecodeError."""
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    with contextlib.suppress(DecodeError):
        make(keys, compression=compression).decrypt(_seal_raw(keys, 1, plain), NOW)


@given(st.binary(min_size=1, max_size=300), st.sampled_from(list(Compression)))
def test_framing_round_trip(payload: bytes, compression: Compression) -> None:
    keys = client_data_keys(bytes(range(256)), "AES-128-GCM")
    client = make(keys, "AES-128-GCM", compression=compression)
    server = make(mirror(keys), "AES-128-GCM", compression=compression)
    assert server.decrypt(client.encrypt(payload), NOW) == payload


@pytest.mark.parametrize("decompress", [True, False])
def test_an_authenticated_lz4_v2_packet_is_decompressed_only_when_allowed(decompress: bool) -> None:
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    decompression = Decompression(1632) if decompress else None
    client = DataChannelKey(
        cipher="AES-256-GCM",
        keys=keys,
        key_id=1,
        peer_id=7,
        compression=Compression.LZ4_V2,
        replay_window=ReplayWindow(),
        decompression=decompression,
    )
    payload = b"\x45" + bytes(1000)
    wire = _seal_raw(keys, 1, b"\x50\x01" + lz4.block.compress(payload, store_size=False))
    if decompression is None:
        with pytest.raises(CompressionRefused):
            client.decrypt(wire, NOW)
        return
    assert client.decrypt(wire, NOW) == payload
    assert client.bytes_received == len(payload)  # counters count payloads, decompressed
    assert decompression.stats.packets == 1


@given(st.binary(min_size=1, max_size=60), st.sampled_from(list(Compression)))
def test_authenticated_hostile_framing_with_decompression(
    plain: bytes, compression: Compression
) -> None:
    """As above, with decompression allowed: the libraries' errors never escape."""
    keys = client_data_keys(bytes(range(256)), "AES-256-GCM")
    key = DataChannelKey(
        cipher="AES-256-GCM",
        keys=keys,
        key_id=1,
        peer_id=7,
        compression=compression,
        replay_window=ReplayWindow(),
        decompression=Decompression(64),
    )
    with contextlib.suppress(DecodeError):
        assert len(key.decrypt(_seal_raw(keys, 1, plain), NOW)) <= 64 + 60
