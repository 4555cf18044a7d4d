"""SOCKS5 CONNECT through a `socks-proxy` (RFC 1928, RFC 1929), sans-IO: bytes in, bytes out.

    handshake = Socks5Connect(proxy, host, port)
    send(handshake.start())                      # the method selection
    while not handshake.done:
        send(handshake.receive(chunk))           # what to send next (b"" for nothing)
    handshake.leftover                           # bytes after the reply: the server's stream

States, each waiting for a fixed-size (or length-prefixed) answer:

    METHOD   sent VER=5, NMETHODS=1, METHODS=[0x00 no auth] or [0x02 user/password] (as
             OpenVPN's socks.c: credentials configured means only user/password is offered,
             so a proxy that would skip authentication cannot silently drop it)
             ← VER=5, METHOD: 0xFF = no acceptable method; another method than offered: error
    AUTH     sent VER=1, ULEN, UNAME, PLEN, PASSWD (RFC 1929) ← VER=1, STATUS (0 = success)
    CONNECT  sent VER=5, CMD=1, RSV=0, ATYP + address, port. A host name goes as a domain name
             (ATYP 3): the proxy resolves it (over Tor, no DNS leak); an IP literal goes as
             ATYP 1/4 (OpenVPN sends literals as names too)
             ← VER=5, REP, RSV, ATYP, BND.ADDR, BND.PORT; REP != 0 is `ProxyRefused` with the
             RFC's words for the code

Whose fault: `ProxyAuthFailed` (no acceptable method, credentials refused), `ProxyRefused`
(the reply code), `ProxyProtocolError` (not SOCKS5). The password never appears in messages.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

from .config.model import SocksProxy
from .errors import ProxyAuthFailed, ProxyProtocolError, ProxyRefused

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version
NO_AUTH = 0x00
USER_PASS = 0x02
NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
MAX_FIELD = 255  # RFC 1929 user name / password; RFC 1928 domain name length octet
_PORT = struct.Struct("!H")

# RFC 1928 §6, the REP field
REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class _Wait(enum.Enum):
    METHOD = "method"
    AUTH = "auth"
    REPLY = "reply"
    DONE = "done"


def encode_method_selection(with_credentials: bool) -> bytes:
    return bytes((VERSION, 1, USER_PASS if with_credentials else NO_AUTH))


def encode_user_pass(username: bytes, password: bytes) -> bytes:
    if not 0 < len(username) <= MAX_FIELD or not 0 < len(password) <= MAX_FIELD:
        raise ProxyAuthFailed("SOCKS user name and password must be 1 to 255 bytes each")
    return bytes((AUTH_VERSION, len(username))) + username + bytes((len(password),)) + password


def encode_connect(host: str, port: int) -> bytes:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna") if not host.isascii() else host.encode()
        if not 0 < len(name) <= MAX_FIELD:
            raise ProxyRefused(f"the host name {host!r} is too long for SOCKS5") from None
        address = bytes((ATYP_DOMAIN, len(name))) + name
    else:
        kind = ATYP_IPV4 if literal.version == 4 else ATYP_IPV6
        address = bytes((kind,)) + literal.packed
    return bytes((VERSION, CMD_CONNECT, 0)) + address + _PORT.pack(port)


def reply_length(head: bytes) -> int | None:
    """The full length of a CONNECT reply given its first 5 bytes, or None if unknown yet."""
    if len(head) < 5:
        return None
    atyp = head[3]
    if atyp == ATYP_IPV4:
        return 4 + 4 + 2
    if atyp == ATYP_IPV6:
        return 4 + 16 + 2
    if atyp == ATYP_DOMAIN:
        return 4 + 1 + head[4] + 2
    raise ProxyProtocolError(f"the SOCKS proxy's reply has an unknown address type {atyp}")


class Socks5Connect:
    """One SOCKS5 CONNECT exchange (see the module doc)."""

    def __init__(self, proxy: SocksProxy, host: str, port: int) -> None:
        self._proxy = proxy
        self._host, self._port = host, port
        self._wait = _Wait.METHOD
        self._buffer = bytearray()
        self.leftover = b""

    def __repr__(self) -> str:
        return f"Socks5Connect(to={self._host!r}:{self._port}, waiting={self._wait.value})"

    @property
    def done(self) -> bool:
        return self._wait is _Wait.DONE

    def start(self) -> bytes:
        return encode_method_selection(self._proxy.credentials is not None)

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the proxy; return what to send next (possibly b"")."""
        if self.done:
            raise ProxyProtocolError("the SOCKS handshake is already complete")
        self._buffer += data
        out = bytearray()
        while not self.done:
            step = self._step()
            if step is None:
                break
            out += step
        return bytes(out)

    def _take(self, n: int) -> bytes | None:
        if len(self._buffer) < n:
            return None
        taken = bytes(self._buffer[:n])
        del self._buffer[:n]
        return taken

    def _step(self) -> bytes | None:
        """One answer handled: the bytes to send next, or None if more bytes are needed."""
        if self._wait is _Wait.METHOD:
            answer = self._take(2)
            if answer is None:
                return None
            return self._on_method(answer[0], answer[1])
        if self._wait is _Wait.AUTH:
            answer = self._take(2)
            if answer is None:
                return None
            if answer[0] not in (AUTH_VERSION, VERSION) or answer[1] != 0:
                assert self._proxy.credentials is not None
                raise ProxyAuthFailed(
                    "the SOCKS proxy refused our user name and password (RFC 1929 status "
                    f"{answer[1]}) for user {self._proxy.credentials.username!r}"
                )
            self._wait = _Wait.REPLY
            return encode_connect(self._host, self._port)
        if len(self._buffer) < 2:
            return None
        if self._buffer[0] != VERSION:
            raise ProxyProtocolError(
                f"the SOCKS proxy's reply is not SOCKS5 (version {self._buffer[0]})"
            )
        if (code := self._buffer[1]) != 0:  # the rest of a failure reply does not matter
            words = REPLIES.get(code, "unassigned reply code")
            raise ProxyRefused(
                f"the SOCKS proxy refused to connect to {self._host}:{self._port}: {words} "
                f"(reply {code})"
            )
        length = reply_length(bytes(self._buffer[:5]))
        if length is None or len(self._buffer) < length:
            return None
        del self._buffer[:length]
        self._wait = _Wait.DONE
        self.leftover = bytes(self._buffer)
        self._buffer.clear()
        return b""

    def _on_method(self, version: int, method: int) -> bytes:
        if version != VERSION:
            raise ProxyProtocolError(
                f"the proxy did not answer as SOCKS5 (version {version}; is it a SOCKS5 proxy?)"
            )
        creds = self._proxy.credentials
        if method == NO_ACCEPTABLE:
            if creds is None:
                raise ProxyAuthFailed(
                    "the SOCKS proxy requires authentication: add a credentials file to socks-proxy"
                )
            raise ProxyAuthFailed(
                "the SOCKS proxy does not accept user/password authentication (RFC 1929)"
            )
        offered = USER_PASS if creds is not None else NO_AUTH
        if method != offered:
            raise ProxyProtocolError(
                f"the SOCKS proxy chose method {method}, which we did not offer ({offered})"
            )
        if creds is None:
            self._wait = _Wait.REPLY
            return encode_connect(self._host, self._port)
        self._wait = _Wait.AUTH
        return encode_user_pass(creds.username.encode(), creds.password.value)
