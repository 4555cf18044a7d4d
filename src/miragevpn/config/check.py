"""What the checker says about a config, as data and text: the summary, the JSON document, the
error line; nothing here reads or prints (the CLI is `qubes_miragevpn.configcheck`).

Every text that comes from a config can hold terminal control sequences: `printable` (from
`miragevpn.printable`) escapes them, and the CLI passes everything it prints through it. Values
read from a file outside the profile's folder are named in `hidden` and never shown (a hostile
`auth-user-pass /etc/shadow` would otherwise show the first line of /etc/shadow as the user
name).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import ipaddress
from collections.abc import Collection

from ..errors import ConfigError
from ..printable import printable
from . import unlock
from .keys import KeyMaterialError
from .model import Config, HttpProxy, Secret, TlsAuth, TlsCrypt, TlsCryptV2
from .values import proto_name

HIDDEN = "<not shown: read from a file outside the profile's folder>"
# The model field each file-taking directive fills.
FILE_FIELDS = {
    "ca": "ca",
    "cert": "cert",
    "extra-certs": "extra_certs",
    "key": "key",
    "pkcs12": "pkcs12",
    "askpass": "key_passphrase",
    "tls-auth": "tls_protection",
    "tls-crypt": "tls_protection",
    "tls-crypt-v2": "tls_protection",
    "secret": "secret",
    "auth-user-pass": "auth_user_pass",
    "http-proxy": "proxy",
    "http-proxy-user-pass": "proxy",
    "socks-proxy": "proxy",
}
# `http-proxy-option CUSTOM-HEADER` headers whose content is a credential: --json shows only
# that they are there.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def config_document(config: Config, hidden: Collection[str] = ()) -> dict[str, object]:
    """The model as JSON-ready data: secrets redacted, `hidden` fields withheld."""
    return {
        f.name: HIDDEN
        if f.name in hidden and getattr(config, f.name) not in (None, ())
        else to_jsonable(getattr(config, f.name))
        for f in dataclasses.fields(config)
    }


def to_jsonable(value: object, *, reveal: bool = False) -> object:
    if isinstance(value, Secret):
        return base64.b64encode(value.value).decode() if reveal else "<redacted>"
    if isinstance(value, HttpProxy) and not reveal:
        value = dataclasses.replace(value, custom_headers=_redacted(value.custom_headers))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name), reveal=reveal)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_jsonable(v, reveal=reveal) for v in value]
    if isinstance(value, frozenset):
        return sorted(to_jsonable(v, reveal=reveal) for v in value)  # type: ignore[type-var]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ipaddress._BaseAddress | ipaddress._BaseNetwork | ipaddress.IPv6Interface):
        return str(value)
    return value


def _redacted(headers: tuple[tuple[str, str | None], ...]) -> tuple[tuple[str, str | None], ...]:
    """Custom headers with the content of credential headers replaced (a header given whole,
    `Name: content` in one word, keeps only its name)."""
    out: list[tuple[str, str | None]] = []
    for name, content in headers:
        field_name = name.split(":", 1)[0].strip()
        if field_name.lower() not in SECRET_HEADERS:
            out.append((name, content))
        elif content is None:
            out.append((f"{field_name}: <redacted>", None))
        else:
            out.append((name, "<redacted>"))
    return tuple(out)


def _data_cipher_lines(c: Config) -> list[str]:
    """What the data channel offers (IV_CIPHERS), accepts from a server that does not negotiate
    (cipherchoice.py), and which of it is legacy (CBC+HMAC)."""
    if c.secret is not None:
        direction = (
            "bidirectional"
            if c.secret_direction is None
            else f"key-direction {int(c.secret_direction)}"
        )
        return [
            f"  legacy: static-key mode (no TLS, no forward secrecy), {c.cipher} with "
            f"HMAC-{c.auth}, {direction}"
        ]
    lines = [f"  data ciphers offered: {':'.join(c.data_ciphers)}"]
    if c.data_ciphers_fallback:
        fallback = f"{c.data_ciphers_fallback} (data-ciphers-fallback)"
    elif c.cipher:
        fallback = f"{c.cipher} (cipher)"
    else:
        fallback = "none configured (BF-CBC servers are refused)"
    lines.append("  without negotiation: the cipher the server's options name, else " + fallback)
    legacy = [
        name
        for name in dict.fromkeys((*c.data_ciphers, c.data_ciphers_fallback, c.cipher))
        if name and name.upper().endswith("-CBC")
    ]
    if legacy:
        lines.append(
            f"  legacy: {', '.join(legacy)} with HMAC-{c.auth} (CBC+HMAC, no AEAD); "
            "prefer AES-256-GCM where the server allows it"
        )
    return lines


def _ca_from_bundle(c: Config) -> bool:
    """Whether `ca` holds the PKCS#12 bundle's own certificates (no `ca` was given: OpenVPN
    trusts them then, and so does resolve.py)."""
    if c.pkcs12 is None or c.ca is None:
        return False
    try:
        return unlock.pkcs12_ca_pem(c.pkcs12.value, c.key_passphrase) == c.ca
    except KeyMaterialError:
        return False


def summary(c: Config, hidden: Collection[str] = ()) -> list[str]:
    """A few lines on what the config does (not escaped: pass them through `printable`)."""
    lines = []
    for r in c.remotes:
        lines.append(f"  remote {r.host} port {r.port} {proto_name(r.proto)}")
    if c.proxy is not None:
        kind = "http-proxy" if isinstance(c.proxy, HttpProxy) else "socks-proxy (SOCKS5)"
        creds = f", user {c.proxy.credentials.username}" if c.proxy.credentials else ", no auth"
        if c.proxy.credentials and "proxy" in hidden:
            creds = ", credentials from a file outside the profile's folder, not shown"
        lines.append(f"  through {kind} {c.proxy.host} port {c.proxy.port}{creds}")
    p = c.tls_protection
    protection = {
        TlsAuth: "tls-auth",
        TlsCrypt: "tls-crypt",
        TlsCryptV2: "tls-crypt-v2",
    }.get(type(p), "none (plain TLS)" if c.secret is None else "none (static-key mode, no TLS)")
    if isinstance(p, TlsAuth):
        direction = "bidirectional" if p.direction is None else f"key-direction {int(p.direction)}"
        protection += f" ({c.auth}, {direction})"
    lines.append(f"  control channel: {protection}")
    lines += _data_cipher_lines(c)
    trust = []
    if c.ca:
        source = " from the PKCS#12 bundle" if _ca_from_bundle(c) else ""
        trust.append(f"{c.ca.count('BEGIN CERTIFICATE')} CA certificate(s){source}")
    elif c.pkcs12 is not None and c.key_passphrase is None:
        trust.append("the PKCS#12 bundle's CA certificates (read when it is unlocked)")
    if c.peer_fingerprints:
        trust.append(f"{len(c.peer_fingerprints)} peer fingerprint(s)")
    if c.remote_cert_tls_server:
        trust.append("remote-cert-tls server")
    if c.remote_cert_ku is not None:
        trust.append(" ".join(["remote-cert-ku", *(f"{ku:02x}" for ku in c.remote_cert_ku)]))
    if c.remote_cert_eku is not None:
        trust.append(f"remote-cert-eku {c.remote_cert_eku}")
    if c.verify_x509_name:
        trust.append(f"verify-x509-name {c.verify_x509_name.name} {c.verify_x509_name.kind.value}")
    lines.append(f"  server check: {', '.join(trust)}")
    auth = []
    locked = ""
    if (c.cert or c.pkcs12) and unlock.locked(c) is not None:
        locked = " (encrypted: passphrase from " + (
            "the askpass file)" if c.key_passphrase else "a prompt at start)"
        )
    if c.cert:
        auth.append("certificate" + locked)
    if c.pkcs12:
        auth.append("PKCS#12" + locked)
    if c.auth_user_pass:
        who = c.auth_user_pass.username
        if "auth_user_pass" in hidden:
            auth.append("user/password (from a file outside the profile's folder, not shown)")
        else:
            auth.append(f"user/password ({'user ' + who if who else 'asked at run time'})")
    lines.append(f"  client auth: {' + '.join(auth)}")
    for w in c.warnings:
        where = f"line {w.line}: " if w.line else ""
        lines.append(f"  warning: {where}{w.directive}: {w.message}")
    if c.ignored:
        names = ", ".join(f"{i.name} (line {i.line})" for i in c.ignored)
        lines.append(f"  ignored: {names}")
    return lines


def format_error(exc: ConfigError) -> str:
    """`FILE:LINE: directive: message`, escaped."""
    where = exc.file or "<config>"
    if exc.line is not None:
        where += f":{exc.line}"
    prefix = f"{exc.directive}: " if exc.directive else ""
    return printable(f"{where}: {prefix}{exc.message}")
