"""Argument parsers shared by the directive handlers: numbers, durations, addresses, names.

OpenVPN reads numbers with `atoi` (so "10s" is 10 and "x" is 0); we accept decimal integers only
and say which argument is wrong.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

from .context import bad_arg, error
from .lexer import Directive
from .model import AddressFamily, Proto, TlsVersion, Transport

INT32_MAX = 2**31 - 1


def integer(d: Directive, arg: int, *, lo: int = 0, hi: int = INT32_MAX) -> int:
    text = d.args[arg].text
    if not text.isascii() or not text.isdigit():
        raise bad_arg(d, arg, "not a number (decimal digits expected)")
    if len(text.lstrip("0")) > 20:  # int() refuses over 4300 digits; all our limits are < 2^64
        raise bad_arg(d, arg, f"out of range ({lo}..{hi})")
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


_NO_SCOPE = "an IPv6 scope id (%...) names one of our interfaces; not allowed here"


def ipv6(d: Directive, arg: int) -> ipaddress.IPv6Address:
    text = d.args[arg].text
    if "%" in text:
        raise bad_arg(d, arg, _NO_SCOPE)
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise bad_arg(d, arg, "not an IPv6 address") from None


def ipv6_network(d: Directive, arg: int) -> ipaddress.IPv6Network:
    text = d.args[arg].text
    if "%" in text:
        raise bad_arg(d, arg, _NO_SCOPE)
    try:
        return ipaddress.IPv6Network(text, strict=False)
    except ValueError:
        raise bad_arg(d, arg, "not an IPv6 network/prefix") from None


# The shortest prefixes a tunnel address may have. The kernel adds a route for the prefix of
# every address; an `ifconfig-ipv6 x/0` or a /1 subnet would route the world into the tunnel
# around `route-nopull` and without the host route to the server (issue 8, finding 2).
MIN_TUNNEL_PREFIX_V4 = 8
MIN_TUNNEL_PREFIX_V6 = 64


def unicast_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` cannot be a host's own address or a server we talk to, or None."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and (
        address == ipaddress.IPv4Address("255.255.255.255") or address.is_reserved
    ):
        return "a broadcast or reserved (240.0.0.0/4) address"
    return None


def unicast_ipv4(d: Directive, arg: int, role: str) -> ipaddress.IPv4Address:
    """A unicast IPv4 address for `role` ("a tunnel address", "a gateway")."""
    address = ipv4(d, arg)
    problem = unicast_problem(address)
    if problem is not None:
        raise bad_arg(d, arg, f"{problem}, not {role}")
    return address


def unicast_ipv6(d: Directive, arg: int, role: str) -> ipaddress.IPv6Address:
    address = ipv6(d, arg)
    problem = unicast_problem(address)
    if problem is not None:
        raise bad_arg(d, arg, f"{problem}, not {role}")
    return address


def tunnel_ipv4(d: Directive, arg: int) -> ipaddress.IPv4Address:
    """Our own IPv4 address on the tunnel (`ifconfig`)."""
    return unicast_ipv4(d, arg, "a tunnel address")


def tunnel_ipv6(d: Directive, arg: int) -> ipaddress.IPv6Interface:
    """Our own IPv6 address/prefix on the tunnel (`ifconfig-ipv6`)."""
    text = d.args[arg].text
    if "%" in text:
        raise bad_arg(d, arg, _NO_SCOPE)
    try:
        interface = ipaddress.IPv6Interface(text)
    except ValueError:
        raise bad_arg(d, arg, "not an IPv6 address/prefix") from None
    problem = unicast_problem(interface.ip)
    if problem is not None:
        raise bad_arg(d, arg, f"{problem}, not a tunnel address")
    if interface.network.prefixlen < MIN_TUNNEL_PREFIX_V6:
        raise bad_arg(
            d,
            arg,
            f"prefix /{interface.network.prefixlen} is shorter than "
            f"/{MIN_TUNNEL_PREFIX_V6}: it would route that whole range into the tunnel",
        )
    return interface


def netmask_prefix(mask: ipaddress.IPv4Address) -> int | None:
    """The prefix length of a contiguous netmask (255.255.0.0 → 16), None for any other mask.

    OpenVPN converts a route's netmask with `netmask_to_netbits2` (route.c), which maps only
    contiguous masks; anything else becomes -1 and the kernel refuses the route. Python's
    `ipaddress` would read 0.255.255.255 as a host mask (/8) instead; we refuse it."""
    value = int(mask)
    inverted = ~value & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None
    return 32 - inverted.bit_length()


def netmask(d: Directive, arg: int) -> int:
    """A route netmask as its prefix length (contiguous masks only, as OpenVPN can use)."""
    prefix = netmask_prefix(ipv4(d, arg))
    if prefix is None:
        raise bad_arg(d, arg, "not a netmask (the one bits must be contiguous from the left)")
    return prefix


# Route metrics, configured or pushed: one bound. Linux takes a 32-bit priority; OpenVPN only
# asks for >= 0. 65535 covers every metric seen in provider configs and keeps a pushed
# metric from outranking every route the system has.
ROUTE_METRIC_MAX = 0xFFFF


def metric(d: Directive, arg: int) -> int | None:
    """A route's metric; `default` (OpenVPN's placeholder) leaves it to `route-metric`."""
    if d.args[arg].text == "default":
        return None
    return integer(d, arg, hi=ROUTE_METRIC_MAX)


def dns_server(d: Directive, arg: int, *, ipv6_only: bool = False) -> str:
    """A DNS server address (dhcp-option DNS/DNS6), in its canonical text form.

    It becomes a resolver entry and a firewall redirection, so it must be one plain unicast
    address: no scope id, not unspecified, loopback, multicast or broadcast."""
    text = d.args[arg].text
    if "%" in text:
        raise bad_arg(d, arg, _NO_SCOPE)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise bad_arg(d, arg, "not an IP address") from None
    if ipv6_only and address.version != 6:
        raise bad_arg(d, arg, "not an IPv6 address")
    problem = unicast_problem(address)
    if problem is not None:
        raise bad_arg(d, arg, f"{problem}, not a DNS server")
    return str(address)


def ipv4_server(d: Directive, arg: int) -> str:
    """A unicast IPv4 server address (dhcp-option NTP, WINS, NBDD), canonical text."""
    address = ipv4(d, arg)
    problem = unicast_problem(address)
    if problem is not None:
        raise bad_arg(d, arg, f"{problem}, not a server address")
    return str(address)


# OpenVPN's validate_domain (domain_helper.h) allows letters, digits, '-', '_' and '.'; we also
# check the DNS lengths (253 in all, 63 per label), that no label is empty, and that none
# begins with '-' (a resolver tool could read it as an option).
_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def domain_name(d: Directive, arg: int) -> str:
    """A DNS domain name (dhcp-option DOMAIN, DOMAIN-SEARCH, ADAPTER_DOMAIN_SUFFIX)."""
    text = d.args[arg].text
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not set(name) <= _DOMAIN_CHARS:
        raise bad_arg(d, arg, "not a domain name (letters, digits, '-', '_' and '.')")
    if any(not label or len(label) > 63 or label[0] == "-" for label in name.split(".")):
        raise bad_arg(
            d, arg, "not a domain name (a label is empty, over 63 characters or starts with '-')"
        )
    return text


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


def base64_text(d: Directive, arg: int) -> str:
    """UTF-8 text given in base64 (the pushed `auth-token-user`)."""
    try:
        return base64.b64decode(d.args[arg].text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_arg(d, arg, "not base64 of UTF-8 text") from None
