"""Argument parsers shared by the directive handlers: numbers, durations, addresses, names.

OpenVPN reads numbers with `atoi` (so "10s" is 10 and "x" is 0); we accept decimal integers only
and say which argument is wrong.
"""

from __future__ import annotations

import ipaddress

from .context import bad_arg, error
from .lexer import Directive
from .model import AddressFamily, Proto, TlsVersion, Transport

INT32_MAX = 2**31 - 1


def integer(d: Directive, arg: int, *, lo: int = 0, hi: int = INT32_MAX) -> int:
    text = d.args[arg].text
    if not text.isascii() or not text.isdigit():
        raise bad_arg(d, arg, "not a number (decimal digits expected)")
    value = int(text)
    if not lo <= value <= hi:
        raise bad_arg(d, arg, f"out of range ({lo}..{hi})")
    return value


def seconds(d: Directive, arg: int, *, lo: int = 0) -> float:
    return float(integer(d, arg, lo=lo))


def port(d: Directive, arg: int, *, lo: int = 1) -> int:
    return integer(d, arg, lo=lo, hi=65535)


def choice(d: Directive, arg: int, options: tuple[str, ...]) -> str:
    text = d.args[arg].text
    if text not in options:
        raise bad_arg(d, arg, f"expected one of {', '.join(options)}")
    return text


# socket.c proto_names: the names `proto` and `remote` accept
_PROTOS = {
    "udp": Proto(Transport.UDP, AddressFamily.ANY),
    "udp4": Proto(Transport.UDP, AddressFamily.IPV4),
    "udp6": Proto(Transport.UDP, AddressFamily.IPV6),
    "tcp": Proto(Transport.TCP, AddressFamily.ANY),
    "tcp4": Proto(Transport.TCP, AddressFamily.IPV4),
    "tcp6": Proto(Transport.TCP, AddressFamily.IPV6),
    "tcp-client": Proto(Transport.TCP, AddressFamily.ANY),
    "tcp4-client": Proto(Transport.TCP, AddressFamily.IPV4),
    "tcp6-client": Proto(Transport.TCP, AddressFamily.IPV6),
}
_SERVER_PROTOS = ("tcp-server", "tcp4-server", "tcp6-server")


def proto(d: Directive, arg: int) -> Proto:
    text = d.args[arg].text.lower()
    if text in _PROTOS:
        return _PROTOS[text]
    if text in _SERVER_PROTOS:
        raise bad_arg(d, arg, "a server protocol; a client uses tcp or tcp-client")
    raise bad_arg(d, arg, "unknown protocol (udp, udp4, udp6, tcp, tcp4, tcp6, tcp-client)")


def proto_name(p: Proto) -> str:
    suffix = {AddressFamily.ANY: "", AddressFamily.IPV4: "4", AddressFamily.IPV6: "6"}
    return p.transport.value + suffix[p.family]


def ipv4(d: Directive, arg: int) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(d.args[arg].text)
    except ValueError:
        raise bad_arg(d, arg, "not an IPv4 address") from None


def ipv6(d: Directive, arg: int) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(d.args[arg].text)
    except ValueError:
        raise bad_arg(d, arg, "not an IPv6 address") from None


_TLS_VERSIONS = {v.value: v for v in TlsVersion}


def tls_version(d: Directive, arg: int) -> TlsVersion:
    text = d.args[arg].text
    if text not in _TLS_VERSIONS:
        raise bad_arg(d, arg, "unknown TLS version (1.0, 1.1, 1.2, 1.3)")
    return _TLS_VERSIONS[text]


# The data-channel ciphers this client implements (datachannel.py); OpenSSL names, upper-case.
AEAD_CIPHERS = ("AES-128-GCM", "AES-192-GCM", "AES-256-GCM", "CHACHA20-POLY1305")
CBC_CIPHERS = ("AES-128-CBC", "AES-192-CBC", "AES-256-CBC")
DATA_CIPHERS = AEAD_CIPHERS + CBC_CIPHERS
# Digests for tls-auth and CBC HMAC (`auth`).
DIGESTS = ("MD5", "SHA1", "SHA224", "SHA256", "SHA384", "SHA512")
_DIGEST_ALIASES = {"SHA-1": "SHA1", "SHA-224": "SHA224", "SHA-256": "SHA256"}
_DIGEST_ALIASES |= {"SHA-384": "SHA384", "SHA-512": "SHA512", "RSA-SHA1": "SHA1"}


def cipher_name(d: Directive, arg: int, text: str | None = None) -> str:
    raw = d.args[arg].text if text is None else text
    name = raw.upper()
    if name == "BF-CBC":
        raise error(
            d,
            "BF-CBC (Blowfish, 64-bit blocks, SWEET32) is not supported; "
            "use AES-256-GCM or ask the provider for a modern config",
            arg,
        )
    if name == "NONE":
        raise error(d, "cipher 'none' (no encryption) is not supported", arg)
    if name not in DATA_CIPHERS:
        raise error(d, f"'{raw}' is not a supported data cipher ({', '.join(DATA_CIPHERS)})", arg)
    return name


def digest_name(d: Directive, arg: int) -> str:
    raw = d.args[arg].text
    name = _DIGEST_ALIASES.get(raw.upper(), raw.upper())
    if name not in DIGESTS:
        raise bad_arg(d, arg, f"unsupported digest ({', '.join(DIGESTS)})")
    return name
