"""HTTP CONNECT through an `http-proxy` (RFC 9110 §9.3.6), sans-IO: bytes in, bytes out.

    handshake = HttpConnect(proxy, host, port)
    send(handshake.request())                      # CONNECT host:port HTTP/1.0 + headers
    while not handshake.receive(chunk): ...        # True once the response header is complete
    handshake.leftover                             # bytes after the header: the server's stream

The request is what OpenVPN 2.6 sends (proxy.c `establish_http_proxy_passthru`,
`add_proxy_headers`): the CONNECT line with `http-proxy-option VERSION` (1.0 by default), the
custom headers, `Host: host:port` unless a custom header gave one (RFC 9110 §7.2; OpenVPN
writes the host alone), `User-Agent` if set, and
`Proxy-Authorization: Basic base64(user:password)` when credentials are configured. An IPv6
literal is written in brackets (`[2001:db8::1]:443`, RFC 9112 authority-form); OpenVPN writes
it bare, which proxies cannot parse.

The response: a 2xx status ends the handshake (OpenVPN insists on 200; tinyproxy, squid and
others send 200). 407 (and 401, which tinyproxy 1.11 sends) is `ProxyAuthFailed` (credentials
missing, or refused); another status is
`ProxyRefused` with the status and reason phrase; something that is not an HTTP status line,
or a header section over MAX_HEADER_BYTES, is `ProxyProtocolError`. The password never
appears in messages or reprs.
"""

from __future__ import annotations

import base64
import ipaddress

from .config.model import HttpProxy
from .errors import ProxyAuthFailed, ProxyProtocolError, ProxyRefused
from .printable import printable

MAX_HEADER_BYTES = 16384  # a CONNECT response header is a few hundred bytes
MAX_REASON_CHARS = 80  # of the proxy's reason phrase, in our messages
_END = b"\r\n\r\n"
_BARE_END = b"\n\n"  # some proxies end lines with LF only (RFC 9112 §2.2 allows reading it)


def authority(host: str, port: int) -> str:
    """`host:port`, brackets around an IPv6 literal."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{literal}]:{port}" if literal.version == 6 else f"{literal}:{port}"


def encode_request(proxy: HttpProxy, host: str, port: int) -> bytes:
    """The CONNECT request for `host:port` (see the module doc for the header order)."""
    target = authority(host, port)
    lines = [f"CONNECT {target} HTTP/{proxy.version}"]
    host_sent = False
    for name, content in proxy.custom_headers:
        if content is None:
            lines.append(name)
            host_sent |= name[:5].lower() == "host:"
        else:
            lines.append(f"{name}: {content}")
            host_sent |= name.lower() == "host"
    if not host_sent:
        lines.append(f"Host: {target}")
    if proxy.agent is not None:
        lines.append(f"User-Agent: {proxy.agent}")
    if proxy.credentials is not None:
        pair = proxy.credentials.username.encode() + b":" + proxy.credentials.password.value
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(pair).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _shown(text: str) -> str:
    """The proxy's words in ours: at most MAX_REASON_CHARS of them, control characters
    escaped (`printable`, as everything a peer or a profile says)."""
    more = "..." if len(text) > MAX_REASON_CHARS else ""
    return printable(text[:MAX_REASON_CHARS]) + more


def decode_status(header: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, reason phrase, headers with lower-case names) of a response header section."""
    text = header.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyProtocolError(
            f"the HTTP proxy did not answer with an HTTP status line: '{_shown(lines[0])}' "
            "(is it an HTTP proxy?)"
        )
    if len(parts[1]) != 3:
        raise ProxyProtocolError(f"the HTTP proxy sent a bad status code {_shown(parts[1])}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    reason = parts[2].strip() if len(parts) > 2 else ""
    return int(parts[1]), _shown(reason), headers


class HttpConnect:
    """One CONNECT exchange (see the module doc)."""

    def __init__(self, proxy: HttpProxy, host: str, port: int) -> None:
        self._proxy = proxy
        self._target = authority(host, port)
        self._request = encode_request(proxy, host, port)
        self._buffer = bytearray()
        self.done = False
        self.leftover = b""

    def __repr__(self) -> str:
        return f"HttpConnect(to={self._target!r}, done={self.done})"

    def request(self) -> bytes:
        return self._request

    def receive(self, data: bytes) -> bool:
        """Take bytes from the proxy; True once the tunnel is open (then see `leftover`)."""
        if self.done:
            raise ProxyProtocolError("the CONNECT handshake is already complete")
        self._buffer += data
        end, size = self._buffer.find(_END), len(_END)
        bare = self._buffer.find(_BARE_END)
        if bare != -1 and (end == -1 or bare < end):
            end, size = bare, len(_BARE_END)
        if end == -1:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise ProxyProtocolError(
                    f"the HTTP proxy's response header is over {MAX_HEADER_BYTES} bytes"
                )
            return False
        header, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + size :])
        self._buffer.clear()
        status, reason, headers = decode_status(header)
        if 200 <= status < 300:
            self.done, self.leftover = True, rest
            return True
        if status in (401, 407):  # tinyproxy 1.11 answers a CONNECT with 401, not 407
            challenge = headers.get("proxy-authenticate") or headers.get("www-authenticate", "")
            scheme = challenge.split(" ", 1)[0]
            asks = f" (it asks for {_shown(scheme)})" if scheme else ""
            if self._proxy.credentials is None:
                raise ProxyAuthFailed(
                    f"the HTTP proxy requires authentication ({status} {reason}){asks}: add "
                    "credentials to http-proxy"
                )
            raise ProxyAuthFailed(
                f"the HTTP proxy refused our credentials for user "
                f"{self._proxy.credentials.username!r} ({status} {reason}){asks}"
            )
        raise ProxyRefused(
            f"the HTTP proxy refused to connect to {self._target}: {status} {reason}".rstrip()
        )
