"""One handler per used directive: check the arguments, decode files, record settings.

The argument counts are checked by the table (`directives.py`) before a handler runs; a handler
records values with `ctx.put(d, key, value)` and never decides about duplicates (resolve.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from . import keys, values
from .context import Context, Handler, bad_arg, error, key_error
from .keys import KeyMaterialError
from .lexer import Directive
from .model import (
    AllowCompression,
    Compression,
    DhcpOption,
    IfConfig,
    IfConfigIPv6,
    KeyDirection,
    Proto,
    PullFilter,
    PullFilterAction,
    ReplayWindow,
    Route,
    RouteGatewayDhcp,
    RouteGatewayKeyword,
    RouteIPv6,
    StaticKey,
    TlsVersion,
    Topology,
    VerifyX509Name,
    X509NameKind,
)


@dataclass(frozen=True, slots=True)
class RawRemote:
    """A `remote` line before the port/proto defaults are applied (resolve.py does that)."""

    host: str
    port: int | None
    proto: Proto | None


@dataclass(frozen=True, slots=True)
class TlsVersionMin:
    version: TlsVersion
    or_highest: bool


def flag(key: str) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        ctx.put(d, key, True)

    return handle


def h_client(ctx: Context, d: Directive) -> None:
    for key in ("client", "pull", "tls_client"):
        ctx.put(d, key, True)


def h_remote(ctx: Context, d: Directive) -> None:
    host = d.args[0].text
    if not host:
        raise bad_arg(d, 0, "empty host name")
    port = values.port(d, 1) if len(d.args) > 1 else None
    proto = values.proto(d, 2) if len(d.args) > 2 else None
    ctx.put(d, "remote", RawRemote(host, port, proto))


def h_proto(ctx: Context, d: Directive) -> None:
    ctx.put(d, "proto", values.proto(d, 0))


def h_port(key: str, lo: int = 1) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        ctx.put(d, key, values.port(d, 0, lo=lo))

    return handle


def h_local(ctx: Context, d: Directive) -> None:
    ctx.put(d, "local", d.args[0].text)


def h_bind(ctx: Context, d: Directive) -> None:
    if d.args and d.args[0].text != "ipv6only":
        raise bad_arg(d, 0, "the only bind flag is ipv6only")
    ctx.put(d, "nobind", False)


def h_dev(ctx: Context, d: Directive) -> None:
    name = d.args[0].text
    if name.startswith("tap"):
        raise error(d, "layer-2 'tap' devices are not supported; this client is tun-only", 0)
    if not name or "/" in name or len(name) > 15:
        raise bad_arg(d, 0, "not a valid interface name")
    ctx.put(d, "dev", name)


def h_dev_type(ctx: Context, d: Directive) -> None:
    kind = values.choice(d, 0, ("tun", "tap"))
    if kind == "tap":
        raise error(d, "layer-2 'tap' devices are not supported; this client is tun-only", 0)
    ctx.put(d, "dev_type", kind)


def h_topology(ctx: Context, d: Directive) -> None:
    ctx.put(d, "topology", Topology(values.choice(d, 0, ("net30", "p2p", "subnet"))))


def h_ifconfig(ctx: Context, d: Directive) -> None:
    # The second address is a peer or a netmask depending on topology: tunnelsettings.py checks
    # it once both are known.
    ctx.put(d, "ifconfig", IfConfig(values.tunnel_ipv4(d, 0), values.ipv4(d, 1)))


def h_ifconfig_ipv6(ctx: Context, d: Directive) -> None:
    interface = values.tunnel_ipv6(d, 0)
    remote = values.ipv6(d, 1) if len(d.args) > 1 else None
    ctx.put(d, "ifconfig_ipv6", IfConfigIPv6(interface, remote))


def h_int(
    key: str, *, lo: int = 0, hi: int = values.INT32_MAX, zero_is_none: bool = False
) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        value = values.integer(d, 0, lo=lo, hi=hi)
        ctx.put(d, key, None if zero_is_none and value == 0 else value)

    return handle


def h_seconds(key: str, *, lo: int = 0, zero_is_none: bool = False) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        value = values.seconds(d, 0, lo=lo)
        ctx.put(d, key, None if zero_is_none and value == 0 else value)

    return handle


def h_mssfix(ctx: Context, d: Directive) -> None:
    value = values.integer(d, 0, hi=65535) if d.args else 1492
    if len(d.args) > 1:
        values.choice(d, 1, ("mtu", "fixed"))
        ctx.warn(d, f"the '{d.args[1].text}' flag is not used by this client")
    ctx.put(d, "mssfix", value)


# --------------------------------------------------------------------------- PKI


def h_remote_cert_tls(ctx: Context, d: Directive) -> None:
    if values.choice(d, 0, ("server", "client")) == "client":
        raise error(d, "'client' checks the peer is a client; a client checks 'server'", 0)
    ctx.put(d, "remote_cert_tls_server", True)


# OpenSSL's long names for the usual extended key usages (OBJ_obj2txt without numbers); OpenVPN
# compares remote-cert-eku with the long name or the dotted OID (ssl_verify_openssl.c)
EKU_NAMES = {
    "TLS Web Server Authentication": "1.3.6.1.5.5.7.3.1",
    "TLS Web Client Authentication": "1.3.6.1.5.5.7.3.2",
    "Code Signing": "1.3.6.1.5.5.7.3.3",
    "E-mail Protection": "1.3.6.1.5.5.7.3.4",
    "Time Stamping": "1.3.6.1.5.5.7.3.8",
    "OCSP Signing": "1.3.6.1.5.5.7.3.9",
}


def h_remote_cert_ku(ctx: Context, d: Directive) -> None:
    """`remote-cert-ku [hex ...]`: the key usage must hold all bits of one value; no value:
    the extension must be present (OpenVPN 2.4+)."""
    usages: list[int] = []
    for i, token in enumerate(d.args):
        text = token.text.lower().removeprefix("0x")
        try:
            value = int(text, 16) if text else -1
        except ValueError:
            value = -1
        if not 0 < value <= 0xFF:
            raise bad_arg(d, i, "a key usage is a hex byte, e.g. a0 or 88 (OpenVPN's bit order)")
        usages.append(value)
    ctx.put(d, "remote_cert_ku", tuple(usages))


def h_remote_cert_eku(ctx: Context, d: Directive) -> None:
    text = d.args[0].text
    oid = EKU_NAMES.get(text, text)
    parts = oid.split(".")
    if len(parts) < 2 or not all(p.isdigit() and p.isascii() for p in parts):
        known = ", ".join(f"'{name}'" for name in EKU_NAMES)
        raise bad_arg(d, 0, f"give a dotted OID (1.3.6.1.5.5.7.3.1) or one of {known}")
    ctx.put(d, "remote_cert_eku", oid)


def h_ns_cert_type(ctx: Context, d: Directive) -> None:
    if values.choice(d, 0, ("server", "client")) == "client":
        raise error(d, "'client' checks the peer is a client; a client checks 'server'", 0)
    ctx.warn(d, "deprecated (OpenVPN 2.6 warns); treated as 'remote-cert-tls server'")
    ctx.put(d, "remote_cert_tls_server", True)


def h_verify_x509_name(ctx: Context, d: Directive) -> None:
    name = d.args[0].text
    if not name:
        raise bad_arg(d, 0, "empty name")
    kind = X509NameKind.SUBJECT
    if len(d.args) > 1:
        kind = X509NameKind(values.choice(d, 1, ("subject", "name", "name-prefix")))
    ctx.put(d, "verify_x509_name", VerifyX509Name(name, kind))


def h_tls_version_min(ctx: Context, d: Directive) -> None:
    or_highest = len(d.args) > 1 and values.choice(d, 1, ("or-highest",)) == "or-highest"
    ctx.put(d, "tls_version_min", TlsVersionMin(values.tls_version(d, 0), or_highest))


def h_tls_version_max(ctx: Context, d: Directive) -> None:
    ctx.put(d, "tls_version_max", values.tls_version(d, 0))


def h_string(key: str) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        if not d.args[0].text:
            raise bad_arg(d, 0, "empty value")
        ctx.put(d, key, d.args[0].text)

    return handle


# --------------------------------------------------------------------------- static keys


def _direction(d: Directive, arg: int) -> KeyDirection:
    return KeyDirection(int(values.choice(d, arg, ("0", "1"))))


def h_key_direction(ctx: Context, d: Directive) -> None:
    ctx.put(d, "key_direction", _direction(d, 0))


def _static(ctx: Context, d: Directive, what: str) -> tuple[StaticKey, tuple[int, ...]]:
    data, _inline, rest = ctx.material(d, what)
    try:
        key = keys.parse_static_key(data, what)
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None
    offset = len(d.args) - len(rest)
    return key, tuple(offset + i for i in range(len(rest)))


def h_tls_auth(ctx: Context, d: Directive) -> None:
    key, rest = _static(ctx, d, "the tls-auth key")
    ctx.put(d, "tls_auth", key)
    if rest:
        ctx.put(d, "key_direction", _direction(d, rest[0]))


def h_secret(ctx: Context, d: Directive) -> None:
    key, rest = _static(ctx, d, "the static key")
    ctx.put(d, "secret", key)
    ctx.warn(
        d,
        "static-key mode: no forward secrecy (the key file decrypts every recorded session); "
        "OpenVPN 2.6 deprecates it, 2.7 needs --allow-deprecated-insecure-static-crypto",
    )
    if rest:
        ctx.put(d, "key_direction", _direction(d, rest[0]))


def h_tls_crypt(ctx: Context, d: Directive) -> None:
    key, rest = _static(ctx, d, "the tls-crypt key")
    if rest:
        raise error(d, "takes one file name", rest[0])
    ctx.put(d, "tls_crypt", key)


def h_tls_crypt_v2(ctx: Context, d: Directive) -> None:
    data, _inline, rest = ctx.material(d, "the tls-crypt-v2 key")
    try:
        ctx.put(d, "tls_crypt_v2", keys.parse_tls_crypt_v2_client_key(data))
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None
    if rest:
        ctx.warn(d, f"'{rest[0].text}' is a server-side flag; not used by a client")


# --------------------------------------------------------------------------- data channel


def h_cipher(ctx: Context, d: Directive) -> None:
    ctx.put(d, "cipher", values.cipher_name(d, 0))


def h_data_ciphers_fallback(ctx: Context, d: Directive) -> None:
    ctx.put(d, "data_ciphers_fallback", values.cipher_name(d, 0))


def h_data_ciphers(ctx: Context, d: Directive) -> None:
    if d.name == "ncp-ciphers":
        ctx.warn(d, "deprecated alias of data-ciphers (OpenVPN 2.6 warns)")
    names: list[str] = []
    for item in d.args[0].text.split(":"):
        optional = item.startswith("?")
        name = item[1:] if optional else item
        if optional and name.upper() not in values.DATA_CIPHERS:
            ctx.warn(d, f"optional cipher '{name}' is not supported here and is skipped")
            continue
        cipher = values.cipher_name(d, 0, name)
        if cipher not in names:
            names.append(cipher)
    if not names:
        raise error(d, "no usable cipher in the list", 0)
    ctx.put(d, "data_ciphers", tuple(names))


def h_auth(ctx: Context, d: Directive) -> None:
    ctx.put(d, "auth", values.digest_name(d, 0))


def h_comp_lzo(ctx: Context, d: Directive) -> None:
    mode = values.choice(d, 0, ("yes", "no", "adaptive")) if d.args else "adaptive"
    ctx.warn(d, "compression is deprecated; we decompress what we receive, never compress")
    ctx.put(d, "compression", Compression.LZO_NO if mode == "no" else Compression.LZO)


_COMPRESS = {
    "stub": Compression.STUB,
    "stub-v2": Compression.STUB_V2,
    "lzo": Compression.LZO,
    "lz4": Compression.LZ4,
    "lz4-v2": Compression.LZ4_V2,
}


def h_compress(ctx: Context, d: Directive) -> None:
    alg = d.args[0].text if d.args else "stub"
    if alg == "migrate":
        raise error(d, "'compress migrate' is a server-side option", 0)
    if alg not in _COMPRESS:
        raise bad_arg(d, 0, f"unknown compression ({', '.join(_COMPRESS)})")
    ctx.warn(d, "compression is deprecated; we decompress what we receive, never compress")
    ctx.put(d, "compression", _COMPRESS[alg])


def h_allow_compression(ctx: Context, d: Directive) -> None:
    ctx.put(d, "allow_compression", AllowCompression(values.choice(d, 0, ("no", "asym", "yes"))))


def h_replay_window(ctx: Context, d: Directive) -> None:
    packets = values.integer(d, 0, lo=64, hi=65536)
    secs = values.seconds(d, 1, lo=1) if len(d.args) > 1 else ReplayWindow().seconds
    ctx.put(d, "replay_window", ReplayWindow(packets, secs))


# --------------------------------------------------------------------------- timers


def h_keepalive(ctx: Context, d: Directive) -> None:
    ping = values.seconds(d, 0, lo=1)
    restart = values.seconds(d, 1, lo=1)
    if restart < 2 * ping:
        raise error(d, "the restart timeout must be at least twice the ping interval", 1)
    ctx.put(d, "ping", ping)
    ctx.put(d, "ping_restart", restart)


def h_reneg_sec(ctx: Context, d: Directive) -> None:
    value = values.seconds(d, 0)  # `reneg-sec max [min]`: keying.reneg_seconds picks
    if len(d.args) > 1:  # a later `reneg-sec max` keeps min, as OpenVPN's options.c does
        ctx.put(d, "reneg_sec_min", values.seconds(d, 1))
    ctx.put(d, "reneg_sec", None if value == 0 else value)


def h_connect_retry(ctx: Context, d: Directive) -> None:
    base = float(min(values.integer(d, 0), 0xFFFF))
    ctx.put(d, "connect_retry", base)
    if len(d.args) > 1:
        ctx.put(d, "connect_retry_max_delay", max(values.seconds(d, 1), base))


def h_resolv_retry(ctx: Context, d: Directive) -> None:
    if d.args[0].text == "infinite":
        ctx.put(d, "resolv_retry", None)
    else:
        ctx.put(d, "resolv_retry", values.seconds(d, 0))


# `explicit-exit-notify n` is how many seconds the client keeps telling the server it leaves
# before it exits; OpenVPN sets no bound, we keep closing time sane (config and push alike).
EXIT_NOTIFY_MAX = 1000


def h_explicit_exit_notify(ctx: Context, d: Directive) -> None:
    value = values.integer(d, 0, hi=EXIT_NOTIFY_MAX) if d.args else 1
    ctx.put(d, "explicit_exit_notify", value)


# --------------------------------------------------------------------------- routes


def _gateway(d: Directive, arg: int) -> ipaddress.IPv4Address | RouteGatewayKeyword | None:
    text = d.args[arg].text
    if text == "default":
        return None
    for keyword in RouteGatewayKeyword:
        if text == keyword.value:
            return keyword
    return values.unicast_ipv4(d, arg, "a gateway")


def h_route(ctx: Context, d: Directive) -> None:
    network_text = d.args[0].text
    prefix = 32
    if len(d.args) > 1 and d.args[1].text != "default":
        prefix = values.netmask(d, 1)
    try:
        address = ipaddress.IPv4Address(network_text)
    except ValueError:
        raise bad_arg(d, 0, "not an IPv4 network (host names are not resolved here)") from None
    network = ipaddress.IPv4Network((address, prefix), strict=False)
    if network.network_address != address:
        ctx.warn(d, f"{network_text} has host bits outside /{prefix}; using {network}")
    gateway = _gateway(d, 2) if len(d.args) > 2 else None
    metric = values.metric(d, 3) if len(d.args) > 3 else None
    ctx.put(d, "routes", Route(network, gateway, metric))


def h_route_ipv6(ctx: Context, d: Directive) -> None:
    network = values.ipv6_network(d, 0)
    gateway = None
    if len(d.args) > 1 and d.args[1].text != "default":
        gateway = values.unicast_ipv6(d, 1, "a gateway")
    metric = values.metric(d, 2) if len(d.args) > 2 else None
    ctx.put(d, "routes_ipv6", RouteIPv6(network, gateway, metric))


def h_route_gateway(ctx: Context, d: Directive) -> None:
    if d.args[0].text == "dhcp":
        ctx.put(d, "route_gateway", RouteGatewayDhcp.DHCP)
    else:
        ctx.put(d, "route_gateway", values.unicast_ipv4(d, 0, "a gateway"))


def h_route_delay(ctx: Context, d: Directive) -> None:
    delay = values.seconds(d, 0) if d.args else 0.0
    if len(d.args) > 1:
        values.integer(d, 1)
        ctx.warn(d, "the window argument is Windows-only and not used")
    ctx.put(d, "route_delay", delay)


REDIRECT_FLAGS = (
    "local",
    "autolocal",
    "def1",
    "bypass-dhcp",
    "bypass-dns",
    "block-local",
    "ipv6",
    "!ipv4",
)


# Flags the runtime does not act on (it routes 0/1 + 128/1, keeps the host route to the server,
# and leaves the LAN to the system's routes and the firewall): said once, never silently.
REDIRECT_FLAGS_NOT_APPLIED = {
    "local": "the server is always reached through the original gateway",
    "autolocal": "the server is always reached through the original gateway",
    "bypass-dhcp": "the DHCP server is not given a route of its own",
    "bypass-dns": "the DNS server is not given a route of its own",
    "block-local": "the local network is not blocked by routes (the firewall decides)",
}


def redirect_flag_note(flag: str) -> str | None:
    """What the runtime does not do for a known `redirect-gateway` flag, or None."""
    why = REDIRECT_FLAGS_NOT_APPLIED.get(flag)
    return None if why is None else f"redirect-gateway flag '{flag}' is not applied: {why}"


def h_redirect_gateway(ctx: Context, d: Directive) -> None:
    flags: set[str] = set()
    for i in range(len(d.args)):
        flags.add(values.choice(d, i, REDIRECT_FLAGS))
    for flag in sorted(flags):
        if (note := redirect_flag_note(flag)) is not None:
            ctx.warn(d, note)
    ctx.put(d, "redirect_gateway", frozenset(flags))


def h_pull_filter(ctx: Context, d: Directive) -> None:
    action = PullFilterAction(values.choice(d, 0, ("accept", "ignore", "reject")))
    ctx.put(d, "pull_filters", PullFilter(action, d.args[1].text))


def _dhcp_nbt(d: Directive, arg: int) -> str:
    return values.choice(d, arg, ("1", "2", "4", "8"))


# The `dhcp-option` kinds OpenVPN 2.6 knows (options.c), each with the parser of its value;
# None: the kind takes no value. DNS values reach resolv.conf and the firewall, domain names
# reach the resolver's search list: each is checked, none is passed on as raw text.
DHCP_OPTION_KINDS: dict[str, Callable[[Directive, int], str] | None] = {
    "DNS": values.dns_server,
    "DNS6": lambda d, arg: values.dns_server(d, arg, ipv6_only=True),
    "DOMAIN": values.domain_name,
    "ADAPTER_DOMAIN_SUFFIX": values.domain_name,
    "DOMAIN-SEARCH": values.domain_name,
    "NTP": values.ipv4_server,
    "WINS": values.ipv4_server,
    "NBDD": values.ipv4_server,
    "NBS": values.domain_name,
    "NBT": _dhcp_nbt,
    "DISABLE-NBT": None,
}


def h_dhcp_option(ctx: Context, d: Directive) -> None:
    kind = d.args[0].text.upper()
    if kind not in DHCP_OPTION_KINDS:
        raise bad_arg(d, 0, f"unknown dhcp-option kind ({', '.join(DHCP_OPTION_KINDS)})")
    parse_value = DHCP_OPTION_KINDS[kind]
    if parse_value is None:
        if len(d.args) > 1:
            raise error(d, f"dhcp-option {kind} takes no value", 1)
        ctx.put(d, "dhcp_options", DhcpOption(kind, None))
        return
    if len(d.args) < 2:
        raise error(d, f"dhcp-option {kind} needs a value")
    ctx.put(d, "dhcp_options", DhcpOption(kind, parse_value(d, 1)))
