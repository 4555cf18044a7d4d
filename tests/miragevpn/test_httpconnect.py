"""HTTP CONNECT codec (httpconnect.py): request bytes, response parsing, whose fault."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.config.model import HttpProxy, ProxyCredentials, Secret
from miragevpn.errors import ProxyAuthFailed, ProxyError, ProxyProtocolError, ProxyRefused
from miragevpn.httpconnect import MAX_HEADER_BYTES, HttpConnect, authority, encode_request

# RFC 7617 §2's example credentials and their Basic token
ALADDIN = ProxyCredentials("Aladdin", Secret(b"open sesame"))


def test_plain_request_is_what_openvpn_sends() -> None:
    assert encode_request(HttpProxy("p", 3128), "vpn.example.org", 443) == (
        b"CONNECT vpn.example.org:443 HTTP/1.0\r\nHost: vpn.example.org:443\r\n\r\n"
    )


def test_request_with_options_and_basic_auth() -> None:
    proxy = HttpProxy(
        "p",
        3128,
        ALADDIN,
        version="1.1",
        agent="Mozilla/5.0",
        custom_headers=(("X-A", "1"), ("X-B: two words", None)),
    )
    assert encode_request(proxy, "10.1.2.3", 1194) == (
        b"CONNECT 10.1.2.3:1194 HTTP/1.1\r\n"
        b"X-A: 1\r\nX-B: two words\r\nHost: 10.1.2.3:1194\r\n"
        b"User-Agent: Mozilla/5.0\r\n"
        b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
    )
    # a custom Host header replaces ours, either form
    for header in (("host", "front.example"), ("Host: front.example", None)):
        request = encode_request(HttpProxy("p", 1, custom_headers=(header,)), "h", 1)
        assert request.lower().count(b"host:") == 1


def test_ipv6_literal_in_brackets() -> None:
    assert authority("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert authority("vpn", 1) == "vpn:1"


def test_200_in_pieces_with_leftover() -> None:
    h = HttpConnect(HttpProxy("p", 1), "vpn", 443)
    assert "open sesame" not in repr(h)
    response = (
        b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n\x00\x2a"
    )
    for i in range(len(response) - 3):
        assert h.receive(response[i : i + 1]) is False
    assert h.receive(response[-3:]) is True
    assert h.done and h.leftover == b"\x00\x2a"
    with pytest.raises(ProxyProtocolError):
        h.receive(b"more")


def test_lf_only_lines() -> None:
    h = HttpConnect(HttpProxy("p", 1), "vpn", 443)
    assert h.receive(b"HTTP/1.1 200 OK\n\nrest") and h.leftover == b"rest"


def test_407_without_and_with_credentials() -> None:
    answer = (
        b'HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n'
    )
    with pytest.raises(ProxyAuthFailed, match=r"requires authentication \(407 .*Basic.*add"):
        HttpConnect(HttpProxy("p", 1), "vpn", 443).receive(answer)
    with pytest.raises(ProxyAuthFailed, match="refused our credentials for user 'Aladdin'") as e:
        HttpConnect(HttpProxy("p", 1, ALADDIN), "vpn", 443).receive(answer)
    assert "sesame" not in str(e.value)
    tinyproxy = b'HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm="tinyproxy"\r\n\r\n'
    with pytest.raises(ProxyAuthFailed, match=r"refused our credentials .*401 Unauthorized.*Basic"):
        HttpConnect(HttpProxy("p", 1, ALADDIN), "vpn", 443).receive(tinyproxy)


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (
            b"HTTP/1.0 403 Access violation\r\n\r\n",
            ProxyRefused,
            "refused to connect to vpn:443: 403 Access violation",
        ),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", ProxyRefused, "502 Bad Gateway"),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            ProxyProtocolError,
            "did not answer with an HTTP status line",
        ),
        (b"HTTP/1.1 20 short\r\n\r\n", ProxyProtocolError, "bad status code"),
        (b"\x05\x00\r\n\r\n", ProxyProtocolError, "is it an HTTP proxy?"),
    ],
)
def test_refusals_say_whose_fault(answer: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        HttpConnect(HttpProxy("p", 1), "vpn", 443).receive(answer)
    assert words in str(info.value)


def test_the_proxys_words_are_shown_escaped_and_bounded() -> None:
    with pytest.raises(ProxyProtocolError) as info:
        HttpConnect(HttpProxy("p", 1), "vpn", 443).receive(b"\x1b[2JSSH-2.0\r\n\r\n")
    assert "'\\x1b[2JSSH-2.0'" in str(info.value) and "\x1b" not in str(info.value)
    with pytest.raises(ProxyRefused) as refused:
        HttpConnect(HttpProxy("p", 1), "vpn", 443).receive(
            b"HTTP/1.1 403 \x07" + b"n" * 200 + b"\r\n\r\n"
        )
    assert str(refused.value).endswith(": 403 \\x07" + "n" * 79 + "...")


def test_header_size_is_bounded() -> None:
    h = HttpConnect(HttpProxy("p", 1), "vpn", 443)
    assert h.receive(b"HTTP/1.0 200 OK\r\n") is False
    with pytest.raises(ProxyProtocolError, match="over"):
        h.receive(b"X: " + b"y" * MAX_HEADER_BYTES + b"\r\n")


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_answer_completes_or_is_a_proxy_error(chunks: list[bytes]) -> None:
    h = HttpConnect(HttpProxy("p", 1, ALADDIN), "vpn", 443)
    try:
        for chunk in chunks:
            if h.receive(chunk):
                break
    except ProxyError as e:
        assert "sesame" not in str(e)
