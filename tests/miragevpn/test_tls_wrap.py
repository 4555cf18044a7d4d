"""tls_wrap.py: tls-auth and tls-crypt against OpenVPN's captured packets, plus properties."""

from __future__ import annotations

import contextlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config.model import (
    KeyDirection,
    ReplayWindow,
    Secret,
    StaticKey,
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
)
from miragevpn.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    LocalProtocolError,
    ReplayError,
)
from miragevpn.packet import (
    ControlPacket,
    Opcode,
    decode_control,
    encode_control,
)
from miragevpn.tls_wrap import (
    TLS_AUTH_DIGESTS,
    PlainWrap,
    TlsAuthWrap,
    TlsCryptV2Wrap,
    TlsCryptWrap,
    make_wrap,
    tls_crypt_open,
    tls_crypt_seal,
)

# tests/unit_tests/openvpn/test_pkt.c (OpenVPN release/2.6): `static_key` and the captured
# packets client_reset_v2_tls_auth, client_reset_v2_tls_crypt, client_ack_tls_auth_randomid
# (reference §11.2). The test there validates them with the server side: tls-auth direction 0
# (KEY_DIRECTION_NORMAL), tls-crypt as server.
STATIC_KEY = StaticKey(
    Secret(
        bytes.fromhex(
            "37268ea8f95d7f71f9fb8fc03770c460daf714a483d815c013ce0a537efc18f2"
            "8f4f172669d9e6a413bac6741d8ea05400f49b7fd6326470f23798c606bf53d4"
            "de63ebc64ec59d57ce5d04d5b62e68b53ca6e5354351097fa370446c4d269f18"
            "7bb6ae54af2dc70ff7317fe2f8754b8282aad4202f9fa42c8640245d883e2c54"
            "a0c1c489a036cf3a8964d8d289c1583b9447c262b1da5fd167a5d27bd5ac5143"
            "17bc2343a31a2efc38dd920d910375f51c2e27f3afd36c49269da079f7ce466e"
            "bb0f9ad13e9bbb4665974e6bc24b513c5700393bf4a3e7f967e2f384069ac8a8"
            "e78b18b15604993fd16515cce9c0f3e42b4126b999005ade802797b0eeb8b9e6"
        )
    )
)
CLIENT_RESET_V2_TLS_AUTH = bytes.fromhex(
    "38de694c5c7bfba27493537c1ded4e781529ae7cfe4b8c6d6b2b51f05a0000000161d3bf6c0000000000"
)
CLIENT_RESET_V2_TLS_CRYPT = bytes.fromhex(
    "38f419cb12d1f9e48f0000000161d3f8e1330206f56802be44fbed905064e3db43"
    "416bec5e526719462b7eb90c96defc9b05c44879f7"
)
CLIENT_ACK_TLS_AUTH_RANDOMID = bytes.fromhex(
    "2014014ebc80c6142b7bc876fbc52e27b1c507355bb6006bae71ba4e38000000"
    "0361d3ff530000000001160301010c0100010803038caaac3a1a07bde7b75006"
    "9b940c344b5a35cac479bdc909b07bd9eebb7de725203938e2183336149f34f0"
    "4459968d0ed24776648859e9380397969845fbf5ff230032130213031301c02c"
    "c030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac014"
    "0039c009c013003300ff0100008d000b000403000102000a000c000a001d0017"
    "001e001900180016000000170000000d0030002e040305030603080708080809"
    "080a080b08040805080604010501060103030203030102010302020204020502"
    "0602002b00050403040303002d00020101003300260024001d00200ec97aff58"
    "db56f640d1eddb9181d6ef83868ab23d88923fd8519cd62656336b"
)
NOW = 1_700_000_000.0


def reset(session_id: bytes) -> ControlPacket:
    return ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, 0, session_id, (), None, 0)


# ---------------------------------------------------------------------------- tls-auth


def test_tls_auth_reset_unwraps_with_the_server_direction() -> None:
    server = TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1")
    assert server.unwrap(CLIENT_RESET_V2_TLS_AUTH, NOW) == reset(bytes.fromhex("de694c5c7bfba274"))


def test_tls_auth_wrap_reproduces_openvpn_bytes() -> None:
    client = TlsAuthWrap(STATIC_KEY, KeyDirection.INVERSE, "SHA1", time=0x61D3BF6C)
    wire = client.wrap(reset(bytes.fromhex("de694c5c7bfba274")), NOW)
    assert wire == CLIENT_RESET_V2_TLS_AUTH
    assert len(wire) - 14 == client.overhead == 28


def test_tls_auth_control_packet_with_tls_payload() -> None:
    server = TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1")
    p = server.unwrap(CLIENT_ACK_TLS_AUTH_RANDOMID, NOW)
    assert p.opcode is Opcode.P_CONTROL_V1
    assert p.session_id == bytes.fromhex("14014ebc80c6142b")
    assert (p.acks, p.remote_session_id, p.sequence_number) == ((), None, 1)
    assert p.payload[:5] == bytes.fromhex("160301010c")  # a TLS ClientHello record
    client = TlsAuthWrap(
        STATIC_KEY, KeyDirection.INVERSE, "SHA1", next_replay_id=3, time=0x61D3FF53
    )
    assert client.wrap(p, NOW) == CLIENT_ACK_TLS_AUTH_RANDOMID


def test_tls_auth_rejects_a_flipped_byte_anywhere() -> None:
    for i in range(len(CLIENT_RESET_V2_TLS_AUTH)):
        server = TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1")
        bad = bytearray(CLIENT_RESET_V2_TLS_AUTH)
        bad[i] ^= 0x23
        with pytest.raises(DecodeError):
            server.unwrap(bytes(bad), NOW)


def test_tls_auth_wrong_direction_fails_authentication() -> None:
    wrong = TlsAuthWrap(STATIC_KEY, KeyDirection.INVERSE, "SHA1")
    with pytest.raises(AuthenticationError):
        wrong.unwrap(CLIENT_RESET_V2_TLS_AUTH, NOW)


def test_tls_auth_replay_is_checked_after_authentication() -> None:
    server = TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1")
    server.unwrap(CLIENT_RESET_V2_TLS_AUTH, NOW)
    with pytest.raises(ReplayError):
        server.unwrap(CLIENT_RESET_V2_TLS_AUTH, NOW)


def test_tls_auth_hmac_input_order() -> None:
    """Derived by hand from reference §2.3: the HMAC covers pid|time|byte0|sid|body."""
    send_key = STATIC_KEY.key.value[192:212]
    mac = hmac.digest(
        send_key, bytes.fromhex("0000000161d3bf6c38de694c5c7bfba2740000000000"), "sha1"
    )
    assert mac == CLIENT_RESET_V2_TLS_AUTH[9:29]


@pytest.mark.parametrize("digest", sorted(TLS_AUTH_DIGESTS))
@pytest.mark.parametrize("direction", [KeyDirection.INVERSE, None])
def test_tls_auth_every_digest_round_trips(digest: str, direction: KeyDirection | None) -> None:
    client = TlsAuthWrap(STATIC_KEY, direction, digest)
    peer = direction if direction is None else KeyDirection.NORMAL
    server = TlsAuthWrap(STATIC_KEY, peer, digest.lower())
    p = ControlPacket(Opcode.P_CONTROL_V1, 3, b"12345678", (5, 6), b"abcdefgh", 9, b"tls bytes")
    wire = client.wrap(p, NOW)
    assert len(wire) == len(encode_control(p)) + client.overhead
    assert client.overhead == TLS_AUTH_DIGESTS[digest] + 8
    assert server.unwrap(wire, NOW) == p
    wire2 = client.wrap(p, NOW)  # a retransmission gets a new replay id
    assert wire2 != wire
    assert server.unwrap(wire2, NOW) == p


def test_tls_auth_unknown_digest() -> None:
    with pytest.raises(ConfigError):
        TlsAuthWrap(STATIC_KEY, None, "WHIRLPOOL")


def test_tls_auth_replay_id_rollover_needs_a_new_second() -> None:
    client = TlsAuthWrap(STATIC_KEY, None, "SHA1", next_replay_id=0xFFFFFFFF, time=100)
    client.wrap(reset(b"12345678"), 100.0)
    with pytest.raises(LocalProtocolError):
        client.wrap(reset(b"12345678"), 100.9)
    wire = client.wrap(reset(b"12345678"), 101.0)
    assert wire[29:37] == bytes.fromhex("00000001 00000065")


# ---------------------------------------------------------------------------- tls-crypt


def test_tls_crypt_reset_unwraps_as_server() -> None:
    server = TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL)
    assert server.unwrap(CLIENT_RESET_V2_TLS_CRYPT, NOW) == reset(bytes.fromhex("f419cb12d1f9e48f"))


def test_tls_crypt_wrap_reproduces_openvpn_bytes() -> None:
    client = TlsCryptWrap(STATIC_KEY, time=0x61D3F8E1)
    wire = client.wrap(reset(bytes.fromhex("f419cb12d1f9e48f")), NOW)
    assert wire == CLIENT_RESET_V2_TLS_CRYPT
    assert client.overhead == 40 == len(wire) - 14


def test_tls_crypt_rejects_a_flipped_byte_anywhere() -> None:
    # as test_pkt.c: test_tls_decrypt_lite_crypt
    for i in range(len(CLIENT_RESET_V2_TLS_CRYPT)):
        server = TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL)
        bad = bytearray(CLIENT_RESET_V2_TLS_CRYPT)
        bad[i] = 0x23 if bad[i] != 0x23 else 0x24
        with pytest.raises(DecodeError):
            server.unwrap(bytes(bad), NOW)


def test_tls_crypt_does_not_accept_tls_auth_or_plain() -> None:
    server = TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL)
    with pytest.raises(DecodeError):  # 42 bytes: too short for tls-crypt
        server.unwrap(CLIENT_RESET_V2_TLS_AUTH, NOW)
    with pytest.raises(AuthenticationError):
        server.unwrap(CLIENT_RESET_V2_TLS_AUTH + bytes(12), NOW)
    tls_auth_server = TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1")
    with pytest.raises(AuthenticationError):
        tls_auth_server.unwrap(CLIENT_RESET_V2_TLS_CRYPT, NOW)
    with pytest.raises(DecodeError):
        server.unwrap(bytes.fromhex("386891923fa31034370000000000"), NOW)


def test_tls_crypt_round_trip_both_ways_and_replay() -> None:
    client = TlsCryptWrap(STATIC_KEY)
    server = TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL)
    p = ControlPacket(Opcode.P_ACK_V1, 1, b"ssssssss", (0, 1, 2), b"cccccccc", None)
    wire = server.wrap(p, NOW)
    assert client.unwrap(wire, NOW) == p
    with pytest.raises(ReplayError):
        client.unwrap(wire, NOW)
    q = ControlPacket(Opcode.P_CONTROL_V1, 1, b"cccccccc", (), None, 1, b"x" * 500)
    assert server.unwrap(client.wrap(q, NOW), NOW) == q
    # a packet wrapped for the other direction does not authenticate
    with pytest.raises(AuthenticationError):
        client.unwrap(client.wrap(q, NOW), NOW)


# ---------------------------------------------------------------------------- tls-crypt-v2

# A WKc is opaque to the client; this one only has a consistent length field.
WKC = bytes(range(256)) + bytes(41) + (299).to_bytes(2, "big")


def test_tls_crypt_v2_appends_wkc_and_starts_at_the_early_negotiation_id() -> None:
    client = TlsCryptV2Wrap(STATIC_KEY, WKC, time=1000)
    server = TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL)
    v3 = ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, 0, b"cccccccc", (), None, 0)
    wire = client.wrap(v3, NOW)
    assert len(wire) == 54 + 299  # reference §3.4
    assert wire.endswith(WKC)
    assert wire[9:17] == bytes.fromhex("0f000001 000003e8")
    assert server.unwrap(wire[: -len(WKC)], NOW) == v3
    ack = ControlPacket(Opcode.P_ACK_V1, 0, b"cccccccc", (0,), b"ssssssss", None)
    plain_wire = client.wrap(ack, NOW)
    assert len(plain_wire) == len(encode_control(ack)) + client.overhead
    wkc1 = ControlPacket(Opcode.P_CONTROL_WKC_V1, 0, b"cccccccc", (0,), b"ssssssss", 1, b"hi")
    wire = client.wrap(wkc1, NOW)
    assert wire.endswith(WKC)
    assert server.unwrap(wire[: -len(WKC)], NOW) == wkc1


def test_tls_crypt_v2_without_early_negotiation() -> None:
    client = TlsCryptV2Wrap(STATIC_KEY, WKC, early_negotiation=False, time=5)
    v3 = ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, 0, b"cccccccc", (), None, 0)
    assert client.wrap(v3, NOW)[9:17] == bytes.fromhex("00000001 00000005")


def test_tls_crypt_v2_rejects_an_inconsistent_wkc() -> None:
    with pytest.raises(ConfigError):
        TlsCryptV2Wrap(STATIC_KEY, WKC[:-1])


# ---------------------------------------------------------------------------- make_wrap


def test_make_wrap() -> None:
    assert isinstance(make_wrap(None, "SHA1"), PlainWrap)
    w = make_wrap(TlsAuth(STATIC_KEY, KeyDirection.INVERSE), "SHA256")
    assert isinstance(w, TlsAuthWrap) and w.overhead == 40
    assert isinstance(make_wrap(TlsCrypt(STATIC_KEY), "SHA1"), TlsCryptWrap)
    v2 = make_wrap(TlsCryptV2(STATIC_KEY, WKC), "SHA1", replay_window=ReplayWindow(128, 30))
    assert isinstance(v2, TlsCryptV2Wrap)


def test_plain_wrap() -> None:
    w = PlainWrap()
    p = reset(b"abcdefgh")
    assert w.unwrap(w.wrap(p, NOW), NOW) == p == decode_control(encode_control(p))


# ---------------------------------------------------------------------------- hostile input


def _hostile(wrap: PlainWrap | TlsAuthWrap | TlsCryptWrap, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wrap.unwrap(data, NOW)


@given(st.binary(max_size=200))
def test_unwrap_hostile(data: bytes) -> None:
    _hostile(PlainWrap(), data)
    _hostile(TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA1"), data)
    _hostile(TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL), data)
    _hostile(TlsCryptV2Wrap(STATIC_KEY, WKC), data)


@given(st.binary(min_size=0, max_size=60), st.sampled_from(["SHA1", "SHA256", "SHA512"]))
def test_authenticated_garbage_body_is_a_decode_error(body: bytes, digest: str) -> None:
    """A peer with the key sends a malformed body: DecodeError, never another exception."""
    size = TLS_AUTH_DIGESTS[digest]
    key = STATIC_KEY.key.value[64 : 64 + size]
    header = bytes.fromhex("20") + b"abcdefgh"
    replay = bytes.fromhex("00000001 00000001")
    name = digest.lower()
    wire = header + hmac.digest(key, replay + header + body, name) + replay + body
    _hostile(TlsAuthWrap(STATIC_KEY, None, digest), wire)


# ---------------------------------------------------------------------------- the primitive

# tests/unit_tests/openvpn/test_tls_crypt.c (release/2.6): test_tls_crypt_secure_reneg_key.
# The EKM is mocked to all 0xba, so both dynamic tls-crypt keys are 0xba * 32; packet id 1,
# time 0, no opcode/session id in front; output = pid | time | tag | ciphertext.
SECURE_RENEG_OUTPUT = bytes.fromhex(
    "0000000100000000e319277f1c8d6e6a7796a855337b9cfb56e1f13a870e6647dfa195c92c17a015"
    "ba4967a11d55ea1a06a7"
)


def test_tls_crypt_primitive_openvpn_vector() -> None:
    clear = bytes.fromhex("00000001 00000000")
    sealed = tls_crypt_seal(
        cipher_key=b"\xba" * 32, auth_key=b"\xba" * 32, clear=clear, plaintext=b"1234567890"
    )
    assert clear + sealed == SECURE_RENEG_OUTPUT
    opened = tls_crypt_open(
        cipher_key=b"\xba" * 32, auth_key=b"\xba" * 32, clear=clear, sealed=sealed
    )
    assert opened == b"1234567890"
    with pytest.raises(AuthenticationError):
        tls_crypt_open(cipher_key=b"\xba" * 32, auth_key=b"\xba" * 32, clear=b"x", sealed=sealed)


def test_dynamic_tls_crypt_key_is_a_tls_crypt_wrap() -> None:
    """The dynamic key of the same vector, used as a 256-byte tls-crypt key: the wrap adds
    byte0 | session id in front, so only the ciphertext length and round trip are comparable."""
    key = StaticKey(Secret(b"\xba" * 256))
    client = TlsCryptWrap(key, time=0)
    server = TlsCryptWrap(key, direction=KeyDirection.NORMAL)
    p = ControlPacket(Opcode.P_CONTROL_SOFT_RESET_V1, 1, b"cccccccc", (), None, 0)
    assert server.unwrap(client.wrap(p, NOW), NOW) == p


# test_tls_crypt.c: test_server_key (bytes 00..7f: Ke = 00..1f, Ka = 40..5f) and the WKc of
# test_client_key (default TIMESTAMP metadata, time 0) and test_client_key_metadata (USER
# metadata, base64 AABBCCDD), taken from the PEM bodies after Kc = 00..ff (reference §11.3).
WKC_TIMESTAMP = bytes.fromhex(
    "177da5c074a94619b16be4acb71f1a6ccf24f33c6bbaf498459d5f06c369d495"
    "2c78396efd93c2598f4771e068cafca3d2d387d87151392b1f74b43df2913707"
    "2ca3ceae6bf741153c97b0cf6d8386b0ddd4baa201fd024693fa44510e035c29"
    "691009bc2624ad8995f9171c1c1b02d9a7efc02436e868e90085a8276a19a6f7"
    "ce1daf85e16a18c3dd1a9ba46c5ad3deb70edd52f151e1be45dcd788c4c2a494"
    "a8bc504fd650e46306093e7cfa75a1218f44f3277055aeef56dc2a68b5d36dee"
    "ed3d927c407e90b18edacfdec7a6b037b0fe04c1b5c7d0fcea131721479cde64"
    "459faad7b482e276dadcfa7cfc5b34fa149bbf6b49a33a03f1212516aed22162"
    "6c7224d887cabc7f9c90c6376de16c6efd9e70b4f080674b4ece3e08b5323bed"
    "f04e6114df11acb31e012b"
)
WKC_USER = bytes.fromhex(
    "69eda75582aa170b8c9418fe28248cdb7761bea2d277aa1647eb3a9d94083733"
    "e91489b4f2d96ef38e2941e4daac313d852c1429f3fc8595ebf6622d1ada6f35"
    "294bca123751d2e8feeaa8076b1ca81f8554c76ac7527f651d3133c2ec70609c"
    "ff4b97416128dd21eef4b36dbb7b40cef01fd9abd5e71cfccb744985b6969c00"
    "68939b6064f293a8538169b483f30baf0a2b2eb7b34ea507059cd5b2ef8b0f2a"
    "8b58ad65cc935deba32e34eb060386057db0ac0e1f27dc7f82c3593960d0590d"
    "86093ad55480159785e3babe0a0e9aa0dd234740437855a3d0c4f9290216381f"
    "978158db22c487d655659ae5d5e0f53b087f5f5efc0a41eb049625f4b3504b24"
    "042a50c65b004b43fa58deab6372daf7a55eb630f41d068fb595cb230c225540"
    "0e9753296d6ace0129"
)


@pytest.mark.parametrize(
    ("wkc", "metadata"),
    [(WKC_TIMESTAMP, b"\x01" + bytes(8)), (WKC_USER, bytes.fromhex("000000410820c3"))],
)
def test_openvpn_wkc_unwraps_with_the_primitive(wkc: bytes, metadata: bytes) -> None:
    """WKc = T | AES-256-CTR(Ke, T[:16], Kc | metadata) | len, T = HMAC(Ka, len | Kc | meta)."""
    length = wkc[-2:]
    assert int.from_bytes(length, "big") == len(wkc)
    plain = tls_crypt_open(
        cipher_key=bytes(range(32)), auth_key=bytes(range(64, 96)), clear=length, sealed=wkc[:-2]
    )
    assert plain == bytes(range(256)) + metadata
    rewrapped = tls_crypt_seal(
        cipher_key=bytes(range(32)), auth_key=bytes(range(64, 96)), clear=length, plaintext=plain
    )
    assert rewrapped + length == wkc
    # and the client sends it verbatim after its V3 reset
    client = TlsCryptV2Wrap(StaticKey(Secret(bytes(range(256)))), wkc)
    v3 = ControlPacket(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, 0, b"cccccccc", (), None, 0)
    assert client.wrap(v3, NOW)[-len(wkc) :] == wkc


@given(
    st.sampled_from([0x20, 0x28, 0x38, 0x40, 0x18, 0x50, 0x58, 0x30, 0x48, 0x00]),
    st.binary(min_size=8, max_size=8),
    st.binary(max_size=120),
)
def test_unwrap_hostile_plausible_headers(byte0: int, sid: bytes, rest: bytes) -> None:
    data = bytes([byte0]) + sid + rest
    _hostile(PlainWrap(), data)
    _hostile(TlsAuthWrap(STATIC_KEY, KeyDirection.NORMAL, "SHA256"), data)
    _hostile(TlsCryptWrap(STATIC_KEY, direction=KeyDirection.NORMAL), data)


@given(st.binary(min_size=1, max_size=60))
def test_tls_crypt_authenticated_garbage_body(body: bytes) -> None:
    """A peer with the tls-crypt key sends a malformed body: DecodeError, nothing else."""
    clear = bytes.fromhex("20") + b"abcdefgh" + bytes.fromhex("00000001 00000001")
    raw = STATIC_KEY.key.value
    sealed = tls_crypt_seal(cipher_key=raw[:32], auth_key=raw[64:96], clear=clear, plaintext=body)
    _hostile(TlsCryptWrap(STATIC_KEY, direction=KeyDirection.INVERSE), clear + sealed)
