"""keymethod.py: key-method-2 messages, peer-info, the OCC options string."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config.model import KeyDirection, Transport
from miragevpn.errors import DecodeError
from miragevpn.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    ClientKeySource,
    ServerKeyMethod2,
    build_options_string,
    build_peer_info,
    decode_server_key_method_2,
    encode_client_key_method_2,
    link_mtu,
    server_key_method_2_length,
)

SOURCE = ClientKeySource(b"P" * 48, b"1" * 32, b"2" * 32)
OPTIONS = (
    "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,"
    "auth [null-digest],keysize 256,key-method 2,tls-client"
)


def s(text: bytes) -> bytes:
    """A key-method-2 string, derived by hand from reference §4.2: u16 length with NUL."""
    return struct.pack("!H", len(text) + 1) + text + b"\x00"


def test_client_message_layout() -> None:
    msg = encode_client_key_method_2(
        SOURCE, options=OPTIONS, username="alice", password=b"secret", peer_info="IV_VER=x\n"
    )
    expected = (
        b"\x00\x00\x00\x00\x02"
        + b"P" * 48
        + b"1" * 32
        + b"2" * 32
        + s(OPTIONS.encode())
        + s(b"alice")
        + s(b"secret")
        + s(b"IV_VER=x\n")
    )
    assert msg == expected


def test_client_message_without_credentials() -> None:
    msg = encode_client_key_method_2(
        SOURCE, options="V4", username=None, password=None, peer_info=""
    )
    assert msg.endswith(s(b"V4") + b"\x00\x00" * 3)
    # an empty username (auth-user-pass with nothing typed) is a NUL, as write_string does
    msg = encode_client_key_method_2(SOURCE, options="V4", username="", password=b"", peer_info="")
    assert msg.endswith(s(b"V4") + b"\x00\x01\x00" * 2 + b"\x00\x00")


def test_client_message_limits() -> None:
    with pytest.raises(ValueError):
        encode_client_key_method_2(
            SOURCE, options="x" * 512, username=None, password=None, peer_info=""
        )
    with pytest.raises(ValueError):
        encode_client_key_method_2(
            SOURCE, options="V4", username="u", password=b"p" * 2000, peer_info=""
        )
    with pytest.raises(ValueError):
        encode_client_key_method_2(
            SOURCE, options="V4", username="u", password=b"a\x00b", peer_info=""
        )


def test_key_source_from_rng() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    source = ClientKeySource.from_rng(rng)
    assert calls == [48, 32, 32]
    assert source.random2 == b"\x03" * 32
    assert "redacted" in repr(source)
    with pytest.raises(ValueError):
        ClientKeySource(b"x", b"1" * 32, b"2" * 32)


def server_message(tail: bytes, method: int = 2) -> bytes:
    return b"\x00" * 4 + bytes([method]) + b"r" * 32 + b"R" * 32 + s(b"V4,server opts") + tail


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00\x00\x00\x00\x00\x00",  # 2.6 server: empty user, pass and peer-info
        b"\x00\x00\x00\x00",  # no peer-info at all
        b"",  # nothing after the options
        b"\x00\x00\x00\x00\x00\x00garbage",  # trailing bytes are ignored, as OpenVPN does
    ],
)
def test_server_message(tail: bytes) -> None:
    got = decode_server_key_method_2(server_message(tail))
    assert got == ServerKeyMethod2(random1=b"r" * 32, random2=b"R" * 32, options="V4,server opts")


def test_server_message_with_strings_and_flags() -> None:
    got = decode_server_key_method_2(server_message(s(b"u") + s(b"p") + s(b"X=1\n"), 0x12))
    assert (got.username, got.password, got.peer_info) == ("u", b"p", "X=1\n")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x01\x02" + bytes(64) + s(b"V4"),  # leading zeros
        b"\x00\x00\x00\x00\x01" + bytes(64) + s(b"V4"),  # key method 1
        b"\x00\x00\x00\x00\x02" + bytes(63),  # truncated randoms
        b"\x00\x00\x00\x00\x02" + bytes(64) + b"\x00",  # truncated options length
        b"\x00\x00\x00\x00\x02" + bytes(64) + b"\x00\x05V4",  # truncated options
        b"\x00\x00\x00\x00\x02" + bytes(64) + b"\x02\x01" + bytes(513),  # options over 512
        b"\x00\x00\x00\x00\x02" + bytes(64) + s(b"V4") + b"\x00\x09ab",  # truncated username
    ],
)
def test_server_message_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_server_key_method_2(data)


@given(st.binary(max_size=200))
def test_server_message_hostile(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_server_key_method_2(data)


@given(st.binary(max_size=150))
def test_server_message_hostile_after_a_valid_prefix(tail: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_server_key_method_2(b"\x00\x00\x00\x00\x02" + bytes(64) + tail)


def test_server_message_length_finds_the_end_before_control_text() -> None:
    message = server_message(b"\x00\x00" * 3)
    data = message + b"PUSH_REPLY,ping 10\x00"
    assert server_key_method_2_length(data) == len(message)
    assert decode_server_key_method_2(data[: len(message)]).options == "V4,server opts"
    for cut in range(len(message)):  # every proper prefix is incomplete
        assert server_key_method_2_length(message[:cut]) is None
    with_strings = server_message(s(b"u") + s(b"p") + s(b"X=1\n"))
    assert server_key_method_2_length(with_strings + b"rest") == len(with_strings)
    with pytest.raises(DecodeError):
        server_key_method_2_length(b"\x00\x00\x00\x01\x02" + bytes(64))
    with pytest.raises(DecodeError):
        server_key_method_2_length(b"\x00\x00\x00\x00\x01" + bytes(64))


def test_peer_info_like_openvpn_2_6() -> None:
    """Line order of ssl.c: push_peer_info (reference §4.4)."""
    iv_proto = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_TLS_KEY_EXPORT
    iv_proto |= IV_PROTO_CC_EXIT_NOTIFY
    assert iv_proto == 142
    info = build_peer_info(
        version="0.1.0",
        platform="linux",
        ciphers=["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"],
        iv_proto=iv_proto,
        mtu=1600,
        extra={"IV_GUI_VER": "qubes-miragevpn_0.1.0"},
    )
    assert info == (
        "IV_VER=0.1.0\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
        "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=142\n"
        "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\nIV_GUI_VER=qubes-miragevpn_0.1.0\n"
    )


def test_peer_info_announces_what_we_decompress() -> None:
    """comp.c (comp_generate_peer_info_string): IV_LZ4, IV_LZ4v2, IV_LZO, and IV_LZO
    replaces IV_LZO_STUB."""
    info = build_peer_info(
        version="1",
        platform="linux",
        ciphers=[],
        iv_proto=0,
        mtu=None,
        compression_algorithms=("IV_LZ4", "IV_LZ4v2", "IV_LZO"),
    )
    assert info.endswith("IV_LZ4=1\nIV_LZ4v2=1\nIV_LZO=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n")


def test_peer_info_without_ncp_and_checks() -> None:
    info = build_peer_info(
        version="1",
        platform="linux",
        ciphers=["CHACHA20-POLY1305"],
        iv_proto=IV_PROTO_DATA_V2,
        mtu=None,
        compression_stubs=False,
    )
    assert "IV_NCP" not in info and "IV_MTU" not in info and "STUB" not in info
    with pytest.raises(ValueError):
        build_peer_info(version="1", platform="linux", ciphers=[], iv_proto=1, mtu=None)
    with pytest.raises(ValueError):
        build_peer_info(version="1", platform="linux", ciphers=[], iv_proto=4, mtu=None)
    with pytest.raises(ValueError):
        build_peer_info(version="1", platform="li\nnux", ciphers=[], iv_proto=2, mtu=None)
    with pytest.raises(ValueError):
        build_peer_info(
            version="1", platform="x", ciphers=[], iv_proto=2, mtu=None, extra={"A-B": "1"}
        )


def test_options_string_like_openvpn_2_6() -> None:
    """The two strings of reference §4.3 (computed there from options.c)."""
    assert build_options_string(cipher="AES-256-GCM") == OPTIONS
    assert build_options_string(cipher=None) == (
        "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,"
        "key-method 2,tls-client"
    )
    assert build_options_string(
        cipher="AES-256-GCM", tls_auth=True, key_direction=KeyDirection.INVERSE
    ) == (
        "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,keydir 1,cipher AES-256-GCM,"
        "auth [null-digest],keysize 256,tls-auth,key-method 2,tls-client"
    )
    tcp = build_options_string(cipher="AES-128-GCM", transport=Transport.TCP, compression=True)
    assert tcp == (
        "V4,dev-type tun,link-mtu 1552,tun-mtu 1500,proto TCPv4_CLIENT,comp-lzo,"
        "cipher AES-128-GCM,auth [null-digest],keysize 128,key-method 2,tls-client"
    )


def test_link_mtu_openvpn_vectors() -> None:
    # test_crypto.c: test_occ_mtu_calculation, tun-mtu 1400, TLS mode (reference §11.1)
    assert link_mtu(tun_mtu=1400, cipher="AES-256-GCM", auth="SHA1") == 1449
    assert link_mtu(tun_mtu=1400, cipher="AES-128-CBC", auth="SHA1") == 1457
