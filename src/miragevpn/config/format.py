"""`format_config`: a `Config` back to a self-contained OpenVPN config (every file inlined).

Only values that differ from the defaults are written, remotes always with port and protocol.
The contract: `parse_config(format_config(cfg), read_file=...) == cfg` for every config the
parser produces. The output holds secrets (keys, passwords): write it with care. The one thing
not written is the passphrase of an encrypted key (`askpass`: OpenVPN has no inline form for it;
`Config.key_passphrase` is outside equality for that reason).
"""

from __future__ import annotations

import base64

from .keys import (
    STATIC_KEY_BEGIN,
    STATIC_KEY_END,
    TLS_CRYPT_V2_CLIENT_BEGIN,
    TLS_CRYPT_V2_CLIENT_END,
)
from .model import (
    AllowCompression,
    AuthRetry,
    Compression,
    Config,
    Proxy,
    Route,
    RouteGatewayDhcp,
    RouteGatewayKeyword,
    SocksProxy,
    StaticKey,
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
)
from .values import proto_name

_DEFAULTS = Config()
_SPECIAL = set(" \t\r\v\f\"'\\#;")

_COMPRESSION_LINES = {
    Compression.NONE: None,
    Compression.LZO_NO: "comp-lzo no",
    Compression.LZO: "comp-lzo yes",
    Compression.STUB: "compress stub",
    Compression.STUB_V2: "compress stub-v2",
    Compression.LZ4: "compress lz4",
    Compression.LZ4_V2: "compress lz4-v2",
}


def quote(text: str) -> str:
    """One token as OpenVPN's parse_line reads it back."""
    if text and not (set(text) & _SPECIAL):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _block(name: str, text: str) -> list[str]:
    body = text if text.endswith("\n") else text + "\n"
    return [f"<{name}>", body.rstrip("\n"), f"</{name}>"]


def _static_key(key: StaticKey) -> str:
    hex_text = key.key.value.hex()
    rows = [hex_text[i : i + 32] for i in range(0, len(hex_text), 32)]
    return "\n".join([STATIC_KEY_BEGIN, *rows, STATIC_KEY_END])


def _base64_rows(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i : i + 64] for i in range(0, len(text), 64)]


def _route(r: Route) -> str:
    words = ["route", str(r.network.network_address), str(r.network.netmask)]
    if r.gateway is not None or r.metric is not None:
        if isinstance(r.gateway, RouteGatewayKeyword):
            words.append(r.gateway.value)
        else:
            words.append("default" if r.gateway is None else str(r.gateway))
    if r.metric is not None:
        words.append(str(r.metric))
    return " ".join(words)


def _connect_retry(base: float, max_delay: float) -> list[str]:
    """Lines that read back as (base, max_delay). The parser raises a given maximum to the
    base (OpenVPN: max(max, base)), but a base alone keeps the maximum: so a base above a
    non-default maximum takes two lines, the maximum first."""
    default_max = _DEFAULTS.connect_retry_max_delay
    if (base, max_delay) == (_DEFAULTS.connect_retry, default_max):
        return []
    if max_delay == default_max and base > max_delay:
        return [f"connect-retry {_n(base)}"]
    if max_delay >= base:
        return [f"connect-retry {_n(base)} {_n(max_delay)}"]
    return [f"connect-retry 0 {_n(max_delay)}", f"connect-retry {_n(base)}"]


def _proxy(p: Proxy | None) -> list[str]:
    if p is None:
        return []
    lines: list[str] = []
    if isinstance(p, SocksProxy):
        if p.credentials is None:
            return [f"socks-proxy {quote(p.host)} {p.port}"]
        creds = f"{p.credentials.username}\n{p.credentials.password.value.decode()}"
        return [f"socks-proxy {quote(p.host)} {p.port} [inline]", *_block("socks-proxy", creds)]
    if p.credentials is None:
        lines.append(f"http-proxy {quote(p.host)} {p.port}")
    else:
        creds = f"{p.credentials.username}\n{p.credentials.password.value.decode()}"
        lines += [f'http-proxy {quote(p.host)} {p.port} "" basic']
        lines += _block("http-proxy-user-pass", creds)
    if p.version != "1.0":
        lines.append(f"http-proxy-option VERSION {p.version}")
    if p.agent is not None:
        lines.append(f"http-proxy-option AGENT {quote(p.agent)}")
    for name, content in p.custom_headers:
        value = f" {quote(content)}" if content is not None else ""
        lines.append(f"http-proxy-option CUSTOM-HEADER {quote(name)}{value}")
    return lines


def format_config(c: Config) -> str:
    out: list[str] = ["# written by miragevpn format_config: self-contained, holds secrets"]
    add = out.append
    if c.client:
        add("client")
    else:
        if c.pull:
            add("pull")
        if c.tls_client:
            add("tls-client")
    for r in c.remotes:
        add(f"remote {quote(r.host)} {r.port} {proto_name(r.proto)}")
    if c.remote_random:
        add("remote-random")
    if c.remote_random_hostname:
        add("remote-random-hostname")
    if c.nobind:
        add("nobind")
    if c.local is not None:
        add(f"local {quote(c.local)}")
    if c.lport is not None:
        add(f"lport {c.lport}")
    if c.float_:
        add("float")
    out += _proxy(c.proxy)
    add(f"dev {quote(c.dev)}")
    if c.dev != "null" and not c.dev.startswith("tun"):
        add("dev-type tun")
    if c.tun_mtu != _DEFAULTS.tun_mtu:
        add(f"tun-mtu {c.tun_mtu}")
    if c.link_mtu is not None:
        add(f"link-mtu {c.link_mtu}")
    if c.mssfix is not None:
        add(f"mssfix {c.mssfix}")

    if c.ca is not None:
        out += _block("ca", c.ca)
    if c.cert is not None:
        out += _block("cert", c.cert)
    if c.key is not None:
        out += _block("key", c.key.value.decode())
    if c.pkcs12 is not None:
        out += _block("pkcs12", "\n".join(_base64_rows(c.pkcs12.value)))
    if c.key_passphrase is not None:
        # OpenVPN reads a passphrase only from a file (askpass has no inline form), and writing
        # it beside the key it protects would undo the protection
        add("# the key's passphrase (askpass) is not written here: add 'askpass FILE', or it is")
        add("# asked for at start")
    if c.extra_certs is not None:
        out += _block("extra-certs", c.extra_certs)
    if c.peer_fingerprints:
        rows = [":".join(f"{b:02X}" for b in digest) for digest in c.peer_fingerprints]
        out += _block("peer-fingerprint", "\n".join(rows))
    if c.remote_cert_tls_server:
        add("remote-cert-tls server")
    if c.remote_cert_ku is not None:
        add(" ".join(["remote-cert-ku", *(f"{ku:02x}" for ku in c.remote_cert_ku)]))
    if c.remote_cert_eku is not None:
        add(f"remote-cert-eku {c.remote_cert_eku}")
    if c.verify_x509_name is not None:
        v = c.verify_x509_name
        add(f"verify-x509-name {quote(v.name)} {v.kind.value}")
    if c.tls_version_min is not None:
        suffix = " or-highest" if c.tls_version_min_or_highest else ""
        add(f"tls-version-min {c.tls_version_min.value}{suffix}")
    if c.tls_version_max is not None:
        add(f"tls-version-max {c.tls_version_max.value}")
    if c.tls_cipher is not None:
        add(f"tls-cipher {quote(c.tls_cipher)}")
    if c.tls_ciphersuites is not None:
        add(f"tls-ciphersuites {quote(c.tls_ciphersuites)}")

    p = c.tls_protection
    direction = c.secret_direction
    if isinstance(p, TlsAuth):
        out += _block("tls-auth", _static_key(p.key))
        direction = p.direction
    elif isinstance(p, TlsCrypt):
        out += _block("tls-crypt", _static_key(p.key))
    elif isinstance(p, TlsCryptV2):
        rows = _base64_rows(p.key.key.value + p.wrapped_key)
        text = "\n".join([TLS_CRYPT_V2_CLIENT_BEGIN, *rows, TLS_CRYPT_V2_CLIENT_END])
        out += _block("tls-crypt-v2", text)
    if c.secret is not None:
        out += _block("secret", _static_key(c.secret))
    if direction is not None:
        add(f"key-direction {int(direction)}")

    if c.data_ciphers != _DEFAULTS.data_ciphers:
        add(f"data-ciphers {':'.join(c.data_ciphers)}")
    if c.data_ciphers_fallback is not None:
        add(f"data-ciphers-fallback {c.data_ciphers_fallback}")
    if c.cipher is not None:
        add(f"cipher {c.cipher}")
    if c.auth != _DEFAULTS.auth:
        add(f"auth {c.auth}")
    if (line := _COMPRESSION_LINES[c.compression]) is not None:
        add(line)
    if c.allow_compression is not AllowCompression.NO:
        add(f"allow-compression {c.allow_compression.value}")
    if c.replay_window != _DEFAULTS.replay_window:
        add(f"replay-window {c.replay_window.packets} {_n(c.replay_window.seconds)}")
    if c.mute_replay_warnings:
        add("mute-replay-warnings")

    if c.auth_user_pass is not None:
        a = c.auth_user_pass
        if a.username is None:
            add("auth-user-pass")
        else:
            lines = [a.username] + ([a.password.value.decode()] if a.password else [])
            out += _block("auth-user-pass", "\n".join(lines))
    if c.auth_nocache:
        add("auth-nocache")
    if c.auth_retry is not AuthRetry.NONE:
        add(f"auth-retry {c.auth_retry.value}")
    if c.static_challenge is not None:
        add(f"static-challenge {quote(c.static_challenge.text)} {int(c.static_challenge.echo)}")

    for name, value in (
        ("ping", c.ping),
        ("ping-restart", c.ping_restart),
        ("ping-exit", c.ping_exit),
    ):
        if value is not None:
            add(f"{name} {_n(value)}")
    for name, attr in (
        ("hand-window", "hand_window"),
        ("tran-window", "tran_window"),
        ("tls-timeout", "tls_timeout"),
        ("connect-timeout", "connect_timeout"),
        ("server-poll-timeout", "server_poll_timeout"),
        ("explicit-exit-notify", "explicit_exit_notify"),
    ):
        if getattr(c, attr) != getattr(_DEFAULTS, attr):
            add(f"{name} {_n(getattr(c, attr))}")
    if c.reneg_sec != _DEFAULTS.reneg_sec or c.reneg_sec_min is not None:
        least = f" {_n(c.reneg_sec_min)}" if c.reneg_sec_min is not None else ""
        add(f"reneg-sec {_n(c.reneg_sec) if c.reneg_sec is not None else 0}{least}")
    if c.reneg_bytes is not None:
        add(f"reneg-bytes {c.reneg_bytes}")
    if c.reneg_pkts is not None:
        add(f"reneg-pkts {c.reneg_pkts}")
    out += _connect_retry(c.connect_retry, c.connect_retry_max_delay)
    if c.connect_retry_max is not None:
        add(f"connect-retry-max {c.connect_retry_max}")
    if c.resolv_retry is not None:
        add(f"resolv-retry {_n(c.resolv_retry)}")

    if c.topology is not None:
        add(f"topology {c.topology.value}")
    if c.ifconfig is not None:
        add(f"ifconfig {c.ifconfig.local} {c.ifconfig.remote_or_netmask}")
    if c.ifconfig_ipv6 is not None:
        remote = f" {c.ifconfig_ipv6.remote}" if c.ifconfig_ipv6.remote else ""
        add(f"ifconfig-ipv6 {c.ifconfig_ipv6.interface}{remote}")
    out += [_route(r) for r in c.routes]
    for r6 in c.routes_ipv6:
        words = ["route-ipv6", str(r6.network)]
        if r6.gateway is not None or r6.metric is not None:
            words.append(str(r6.gateway) if r6.gateway is not None else "default")
        if r6.metric is not None:
            words.append(str(r6.metric))
        add(" ".join(words))
    if c.route_gateway is not None:
        gw = c.route_gateway
        add(f"route-gateway {'dhcp' if isinstance(gw, RouteGatewayDhcp) else gw}")
    if c.route_metric is not None:
        add(f"route-metric {c.route_metric}")
    if c.route_delay is not None:
        add(f"route-delay {_n(c.route_delay)}")
    if c.redirect_gateway is not None:
        add(" ".join(["redirect-gateway", *sorted(c.redirect_gateway.flags)]))
    if c.route_nopull:
        add("route-nopull")
    if c.block_ipv6:
        add("block-ipv6")
    for f in c.pull_filters:
        add(f"pull-filter {f.action.value} {quote(f.text)}")
    for o in c.dhcp_options:
        add(f"dhcp-option {quote(o.kind)}" + (f" {quote(o.value)}" if o.value is not None else ""))
    if c.persist_key:
        add("persist-key")
    if c.persist_tun:
        add("persist-tun")
    return "\n".join(out) + "\n"
