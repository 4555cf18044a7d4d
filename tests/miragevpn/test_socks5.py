"""SOCKS5 codec (socks5.py): RFC 1928/1929 bytes, states, whose fault."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config.model import ProxyCredentials, Secret, SocksProxy
from miragevpn.errors import ProxyAuthFailed, ProxyError, ProxyProtocolError, ProxyRefused
from miragevpn.socks5 import Socks5Connect, encode_connect

ALICE = ProxyCredentials("alice", Secret(b"pw"))
OK_IPV4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x1f\x90"  # succeeded, bound 127.0.0.1:8080


def test_connect_request_vectors() -> None:
    assert encode_connect("vpn.example", 443) == b"\x05\x01\x00\x03\x0bvpn.example\x01\xbb"
    assert encode_connect("10.0.0.1", 1194) == b"\x05\x01\x00\x01\x0a\x00\x00\x01\x04\xaa"
    assert encode_connect("2001:db8::1", 1) == (
        b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x00\x01"
    )
    with pytest.raises(ProxyRefused, match="too long"):
        encode_connect("a" * 256, 1)


def test_no_auth_handshake_byte_by_byte() -> None:
    s = Socks5Connect(SocksProxy("p"), "vpn.example", 443)
    assert s.start() == b"\x05\x01\x00"
    assert s.receive(b"\x05") == b""
    assert s.receive(b"\x00") == b"\x05\x01\x00\x03\x0bvpn.example\x01\xbb"
    for byte in OK_IPV4[:-1]:
        assert s.receive(bytes((byte,))) == b"" and not s.done
    assert s.receive(OK_IPV4[-1:] + b"\x00\x14") == b""
    assert s.done and s.leftover == b"\x00\x14"


def test_user_pass_handshake_in_one_chunk_each() -> None:
    s = Socks5Connect(SocksProxy("p", 1080, ALICE), "10.0.0.1", 1194)
    assert "pw" not in repr(s)
    assert s.start() == b"\x05\x01\x02"  # only user/password offered, as OpenVPN
    assert s.receive(b"\x05\x02") == b"\x01\x05alice\x02pw"
    assert s.receive(b"\x01\x00") == b"\x05\x01\x00\x01\x0a\x00\x00\x01\x04\xaa"
    # a domain-name bound address in the reply
    assert s.receive(b"\x05\x00\x00\x03\x04host\x00\x50") == b"" and s.done


def test_everything_at_once() -> None:
    s = Socks5Connect(SocksProxy("p"), "h", 1)
    s.start()
    s.receive(b"\x05\x00" + b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x00" + b"tail")
    assert s.done and s.leftover == b"tail"


@pytest.mark.parametrize(
    ("proxy", "answers", "error", "words"),
    [
        (SocksProxy("p"), [b"\x05\xff"], ProxyAuthFailed, "requires authentication"),
        (
            SocksProxy("p", 1, ALICE),
            [b"\x05\xff"],
            ProxyAuthFailed,
            "does not accept user/password",
        ),
        (
            SocksProxy("p", 1, ALICE),
            [b"\x05\x02", b"\x01\x01"],
            ProxyAuthFailed,
            "refused our user name and password",
        ),
        (SocksProxy("p"), [b"\x05\x02"], ProxyProtocolError, "did not offer"),
        (SocksProxy("p"), [b"\x04\x5a"], ProxyProtocolError, "is it a SOCKS5 proxy?"),
        (SocksProxy("p"), [b"HTTP/1.0 400"], ProxyProtocolError, "not answer as SOCKS5"),
        (
            SocksProxy("p"),
            [b"\x05\x00", b"\x05\x05\x00\x01"],
            ProxyRefused,
            "connection refused (reply 5)",
        ),
        (SocksProxy("p"), [b"\x05\x00", b"\x05\x02"], ProxyRefused, "not allowed by ruleset"),
        (
            SocksProxy("p"),
            [b"\x05\x00", b"\x05\x00\x00\x09\x00"],
            ProxyProtocolError,
            "unknown address type",
        ),
        (SocksProxy("p"), [b"\x05\x00", b"\x04\x00"], ProxyProtocolError, "not SOCKS5"),
    ],
)
def test_failures_say_whose_fault(
    proxy: SocksProxy, answers: list[bytes], error: type[Exception], words: str
) -> None:
    s = Socks5Connect(proxy, "vpn", 443)
    s.start()
    with pytest.raises(error) as info:
        for answer in answers:
            s.receive(answer)
    assert words in str(info.value)
    assert "pw" not in str(info.value).replace("password", "")


# plausible beginnings of a proxy's answer, so that the random rest reaches every state
PREFIXES = st.sampled_from(
    [b"", b"\x05\x00", b"\x05\x02", b"\x05\x02\x01\x00", b"\x05\x00\x05\x00\x00"]
)


@given(PREFIXES, st.binary(max_size=40), st.lists(st.integers(0, 60), max_size=6), st.booleans())
def test_any_answer_completes_or_is_a_proxy_error(
    prefix: bytes, rest: bytes, cuts: list[int], with_creds: bool
) -> None:
    """Whatever a (hostile) proxy sends, in whatever pieces: done, waiting, or a ProxyError,
    never another exception; what we send is always one of the protocol's messages."""
    s = Socks5Connect(SocksProxy("p", 1080, ALICE if with_creds else None), "vpn.example", 443)
    s.start()
    data = prefix + rest
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    expected = (b"\x01\x05alice\x02pw" if with_creds else b"") + encode_connect("vpn.example", 443)
    sent = b""
    try:
        for chunk in chunks:
            if s.done:
                break
            sent += s.receive(chunk)
    except ProxyError:
        pass
    assert expected.startswith(sent)  # our messages, in order, each whole
    assert len(sent) in {0, len(expected), len(expected) - len(encode_connect("vpn.example", 443))}
