"""Control-channel text messages: framing, classification, and PUSH_REPLY options.

OpenVPN references: `ssl.c` (`extract_control_message`, CVE-2024-5594 hardening), `push.c`
(`process_incoming_push_msg`, `push-continuation`), `options_parse.c` (`parse_line`,
`apply_push_options`), `options_util.c` (`apply_pull_filter`), `init.c` (`pull_permission_mask`:
what `route-nopull` removes).

Pushed options go through an **allow-list**: the options we apply are parsed into typed fields of
the frozen `PushedOptions`; harmless options we do not act on are recorded in `ignored` with a
reason, as are allowed options that fail to parse (OpenVPN logs those and carries on). Only a
pushed cipher outside our `data-ciphers`, real compression we cannot do, or a `pull-filter reject`
match end the session (`RemoteProtocolError`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from .config.lexer import split_line
from .config.model import (
    AllowCompression,
    Compression,
    Config,
    DhcpOption,
    IfConfig,
    IfConfigIPv6,
    PullFilterAction,
    RedirectGateway,
    Route,
    RouteGatewayKeyword,
    RouteIPv6,
    Secret,
    Topology,
)
from .errors import ConfigError, DecodeError, RemoteProtocolError

# --------------------------------------------------------------------------- framing

MAX_BUFFERED = 65536  # plaintext kept while waiting for a NUL (a 2.6 message is < 2 KiB)


def split_control_messages(buffer: bytearray) -> list[str]:
    """Take every complete NUL-terminated message out of `buffer` (the rest stays for later).

    Trailing CR/LF are stripped; messages with non-printable characters are dropped, as
    OpenVPN 2.6.11+ does. Raises `DecodeError` if `buffer` grows without a NUL."""
    messages = []
    while True:
        end = buffer.find(0)
        if end < 0:
            break
        raw = bytes(buffer[:end]).rstrip(b"\r\n")
        del buffer[: end + 1]
        if raw and all(0x20 <= byte < 0x7F for byte in raw):
            messages.append(raw.decode("ascii"))
    if len(buffer) > MAX_BUFFERED:
        buffer.clear()
        raise DecodeError("control channel text without a terminating NUL is too long")
    return messages


def encode_control_message(text: str) -> bytes:
    """A control message as sent: ASCII, one NUL at the end (written as one TLS record)."""
    return text.encode("ascii") + b"\x00"


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class PushReply:
    options: tuple[str, ...]  # raw option lines, `push-continuation` removed
    more_follows: bool  # `push-continuation 2`: accumulate and wait for the last part


@dataclass(frozen=True, slots=True)
class AuthFailed:
    reason: str  # "" when the server gave none

    @property
    def temporary(self) -> bool:
        return self.reason.startswith("TEMP")


@dataclass(frozen=True, slots=True)
class AuthPending:
    timeout: float | None  # `AUTH_PENDING,timeout N`


@dataclass(frozen=True, slots=True)
class Restart:
    message: str
    flags: frozenset[str]  # "P" keep credentials, "N" advance to the next remote


@dataclass(frozen=True, slots=True)
class Halt:
    message: str
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Info:
    text: str
    pre: bool  # INFO_PRE


@dataclass(frozen=True, slots=True)
class Exit:
    """The peer is exiting (cc-exit)."""


@dataclass(frozen=True, slots=True)
class Unrecognised:
    text: str


ControlMessage = PushReply | AuthFailed | AuthPending | Restart | Halt | Info | Exit | Unrecognised


def _flags_and_message(rest: str) -> tuple[frozenset[str], str]:
    """`[flags]message` as used by RESTART and HALT (`push.c: parse_signal_flags`)."""
    if rest.startswith("["):
        close = rest.find("]")
        if close > 0:
            return frozenset(rest[1:close]), rest[close + 1 :]
    return frozenset(), rest


def _after(text: str, prefix: str) -> str | None:
    """The text after `prefix` and an optional comma, or None if `text` is another message."""
    if text == prefix:
        return ""
    if text.startswith(prefix + ","):
        return text[len(prefix) + 1 :]
    return None


def parse_control_message(text: str) -> ControlMessage:
    """Classify one control message (already split and checked printable)."""
    if text.startswith("PUSH_REPLY") and text[10:11] in ("", ","):
        return _parse_push_reply(text[11:])
    if (rest := _after(text, "AUTH_FAILED")) is not None:
        return AuthFailed(rest)
    if (rest := _after(text, "AUTH_PENDING")) is not None:
        return AuthPending(_pending_timeout(rest))
    if (rest := _after(text, "RESTART")) is not None:
        flags, message = _flags_and_message(rest)
        return Restart(message, flags)
    if (rest := _after(text, "HALT")) is not None:
        flags, message = _flags_and_message(rest)
        return Halt(message, flags)
    if (rest := _after(text, "INFO_PRE")) is not None:
        return Info(rest, pre=True)
    if (rest := _after(text, "INFO")) is not None:
        return Info(rest, pre=False)
    if text == "EXIT" or text.startswith("EXIT,"):
        return Exit()
    return Unrecognised(text)


def _pending_timeout(rest: str) -> float | None:
    for item in rest.split(","):
        words = item.split()
        if len(words) == 2 and words[0] == "timeout" and words[1].isdigit():
            return float(words[1])
    return None


def _parse_push_reply(body: str) -> PushReply:
    lines = [line for line in body.split(",") if line.strip()] if body else []
    more = False
    if lines:
        words = lines[-1].split()
        if len(words) == 2 and words[0] == "push-continuation":
            more = words[1] == "2"
            lines.pop()
    return PushReply(tuple(lines), more)


class PushReplyAssembler:
    """Accumulates `push-continuation 2` parts until the last one (bounded)."""

    MAX_OPTIONS = 4096

    def __init__(self) -> None:
        self._options: list[str] = []

    def add(self, part: PushReply) -> tuple[str, ...] | None:
        """The complete option list once the last part arrived, else None."""
        self._options.extend(part.options)
        if len(self._options) > self.MAX_OPTIONS:
            self._options.clear()
            raise DecodeError("PUSH_REPLY continuation exceeds 4096 options")
        if part.more_follows:
            return None
        options, self._options = tuple(self._options), []
        return options


# --------------------------------------------------------------------------- option lines


def parse_line(line: str) -> list[str]:
    """Split one pushed option line into words, exactly as a config line is read (OpenVPN
    `parse_line`: quotes, backslash escapes, `#`/`;` comments); a lexical error is the peer's,
    so it is a `DecodeError` here."""
    try:
        return [token.text for token in split_line(line, 1)]
    except ConfigError as exc:
        raise DecodeError(f"{exc.message} in pushed option {line!r}") from None


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class IgnoredOption:
    text: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PushedOptions:
    """The options of one complete PUSH_REPLY that we apply (None/empty: not pushed)."""

    ifconfig: IfConfig | None = None
    ifconfig_ipv6: IfConfigIPv6 | None = None
    topology: Topology | None = None
    route_gateway: ipaddress.IPv4Address | None = None
    routes: tuple[Route, ...] = ()
    routes_ipv6: tuple[RouteIPv6, ...] = ()
    redirect_gateway: RedirectGateway | None = None
    dhcp_options: tuple[DhcpOption, ...] = ()
    peer_id: int | None = None
    cipher: str | None = None
    protocol_flags: frozenset[str] = frozenset()
    key_derivation: str | None = None
    ping: float | None = None
    ping_restart: float | None = None
    ping_exit: float | None = None
    tun_mtu: int | None = None
    explicit_exit_notify: int | None = None
    compression: Compression | None = None
    auth_token: Secret | None = None
    auth_token_user: str | None = None
    ignored: tuple[IgnoredOption, ...] = field(default=(), compare=False)

    @property
    def uses_ekm(self) -> bool:
        """The server asked for TLS-EKM data keys (`key-derivation tls-ekm` or the flag)."""
        return self.key_derivation == "tls-ekm" or "tls-ekm" in self.protocol_flags

    @property
    def cc_exit(self) -> bool:
        return "cc-exit" in self.protocol_flags


# Options `route-nopull` removes: OPT_P_ROUTE and OPT_P_DHCPDNS (init.c pull_permission_mask).
ROUTE_NOPULL_DROPS = frozenset(
    {
        "route",
        "route-ipv6",
        "route-metric",
        "redirect-gateway",
        "redirect-private",
        "block-ipv6",
        "client-nat",
        "dns",
        "dhcp-option",
        "block-outside-dns",
        "register-dns",
        "tap-sleep",
        "dhcp-renew",
        "dhcp-pre-release",
    }
)

# Harmless options we accept without acting on them, with the reason.
HARMLESS = {
    "tun-ipv6": "obsolete, IPv6 in the tunnel needs no switch",
    "block-outside-dns": "Windows only",
    "register-dns": "Windows only",
    "dhcp-renew": "Windows only",
    "dhcp-pre-release": "Windows only",
    "tap-sleep": "Windows only",
    "route-metric": "routes keep the runtime's metric",
    "route-delay": "routes are installed at once",
    "block-ipv6": "the runtime's firewall decides what IPv6 may leave",
    "redirect-private": "only redirect-gateway is applied",
    "client-nat": "not supported; ignored",
    "dns": "structured `dns` option is not applied; dhcp-option DNS is",
    "sndbuf": "socket buffer sizes are the runtime's",
    "rcvbuf": "socket buffer sizes are the runtime's",
    "socket-flags": "socket options are the runtime's",
    "inactive": "inactivity timeout not supported",
    "session-timeout": "session timeout not supported",
    "echo": "informational",
    "setenv": "no scripts run",
    "setenv-safe": "no scripts run",
    "persist-tun": "the runtime keeps the tun device anyway",
    "persist-key": "keys are kept across restarts anyway",
    "ifconfig-ipv6-pool": "server option",
    "mssfix": "MSS clamping is the runtime's",
    "tun-mtu-extra": "tap only",
    "auth-retry": "local option",
}

_COMPRESSION_STUBS = {
    ("comp-lzo", "no"): Compression.LZO_NO,
    ("compress",): Compression.STUB,
    ("compress", "stub"): Compression.STUB,
    ("compress", "stub-v2"): Compression.STUB_V2,
}
_REAL_COMPRESSION = {
    ("comp-lzo",): Compression.LZO,
    ("comp-lzo", "yes"): Compression.LZO,
    ("comp-lzo", "adaptive"): Compression.LZO,
    ("compress", "lzo"): Compression.LZO,
    ("compress", "lz4"): Compression.LZ4,
    ("compress", "lz4-v2"): Compression.LZ4_V2,
}


class _Invalid(Exception):
    """A pushed option that fails to parse: recorded as ignored, processing goes on."""


def _ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise _Invalid(f"{text!r} is not an IPv4 address") from exc


def _ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise _Invalid(f"{text!r} is not an IPv6 address") from exc


def _integer(text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise _Invalid(f"{text!r} is not a number from {low} to {high}")
    return int(text)


def _arity(words: list[str], low: int, high: int) -> None:
    if not low <= len(words) - 1 <= high:
        raise _Invalid(f"takes {low} to {high} arguments, got {len(words) - 1}")


@dataclass(slots=True)
class _Builder:
    config: Config
    values: dict[str, object] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    routes_ipv6: list[RouteIPv6] = field(default_factory=list)
    dhcp_options: list[DhcpOption] = field(default_factory=list)
    ignored: list[IgnoredOption] = field(default_factory=list)


def _opt_ifconfig(b: _Builder, w: list[str]) -> None:
    _arity(w, 2, 2)
    b.values["ifconfig"] = IfConfig(_ipv4(w[1]), _ipv4(w[2]))


def _opt_ifconfig_ipv6(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 2)
    try:
        interface = ipaddress.IPv6Interface(w[1])
    except ValueError as exc:
        raise _Invalid(f"{w[1]!r} is not an IPv6 address/prefix") from exc
    b.values["ifconfig_ipv6"] = IfConfigIPv6(interface, _ipv6(w[2]) if len(w) > 2 else None)


def _opt_topology(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    try:
        b.values["topology"] = Topology(w[1])
    except ValueError as exc:
        raise _Invalid(f"unknown topology {w[1]!r}") from exc


def _opt_route_gateway(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    if w[1] == "dhcp":
        raise _Invalid("route-gateway dhcp is for tap devices")
    b.values["route_gateway"] = _ipv4(w[1])


def _metric(text: str) -> int | None:
    return None if text == "default" else _integer(text, 0, 2**31 - 1)


def _opt_route(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 4)
    mask = w[2] if len(w) > 2 and w[2] != "default" else "255.255.255.255"
    try:
        network = ipaddress.IPv4Network(f"{_ipv4(w[1])}/{_ipv4(mask)}", strict=False)
    except ValueError as exc:
        raise _Invalid(f"{mask!r} is not a netmask") from exc
    gateway: ipaddress.IPv4Address | RouteGatewayKeyword | None = None
    if len(w) > 3 and w[3] != "default":
        try:
            gateway = RouteGatewayKeyword(w[3])
        except ValueError:
            gateway = _ipv4(w[3])
    metric = _metric(w[4]) if len(w) > 4 else None
    b.routes.append(Route(network, gateway, metric))


def _opt_route_ipv6(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 3)
    try:
        network = ipaddress.IPv6Network(w[1], strict=False)
    except ValueError as exc:
        raise _Invalid(f"{w[1]!r} is not an IPv6 network") from exc
    gateway = _ipv6(w[2]) if len(w) > 2 and w[2] != "default" else None
    metric = _metric(w[3]) if len(w) > 3 else None
    b.routes_ipv6.append(RouteIPv6(network, gateway, metric))


def _opt_redirect_gateway(b: _Builder, w: list[str]) -> None:
    b.values["redirect_gateway"] = RedirectGateway(frozenset(word.lower() for word in w[1:]))


def _opt_dhcp_option(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 2)
    b.dhcp_options.append(DhcpOption(w[1].upper(), w[2] if len(w) > 2 else None))


def _opt_peer_id(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    b.values["peer_id"] = _integer(w[1], 0, 0xFFFFFF)


def _opt_cipher(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    name = w[1].upper()
    if name not in {c.upper() for c in b.config.data_ciphers}:
        raise RemoteProtocolError(
            f"server pushed cipher {w[1]!r}, which is not in our data-ciphers "
            f"({':'.join(b.config.data_ciphers)})"
        )
    b.values["cipher"] = name


def _opt_protocol_flags(b: _Builder, w: list[str]) -> None:
    b.values["protocol_flags"] = frozenset(w[1:])


def _opt_key_derivation(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    if w[1] != "tls-ekm":
        raise _Invalid(f"unknown key derivation {w[1]!r}")
    b.values["key_derivation"] = w[1]


def _seconds(key: str) -> Callable[[_Builder, list[str]], None]:
    def apply(b: _Builder, w: list[str]) -> None:
        _arity(w, 1, 1)
        b.values[key] = float(_integer(w[1], 0, 2**31 - 1))

    return apply


def _opt_tun_mtu(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    b.values["tun_mtu"] = _integer(w[1], 68, 65535)


def _opt_explicit_exit_notify(b: _Builder, w: list[str]) -> None:
    _arity(w, 0, 1)
    b.values["explicit_exit_notify"] = _integer(w[1], 0, 1000) if len(w) > 1 else 1


def _opt_compression(b: _Builder, w: list[str]) -> None:
    key = tuple(w[:2])
    if key in _COMPRESSION_STUBS:
        b.values["compression"] = _COMPRESSION_STUBS[key]
        return
    if key in _REAL_COMPRESSION:
        if b.config.allow_compression is AllowCompression.NO:
            raise RemoteProtocolError(
                f"server pushed {' '.join(w)!r} but compression is not allowed "
                "(allow-compression no)"
            )
        b.values["compression"] = _REAL_COMPRESSION[key]
        return
    raise _Invalid("unknown compression")


def _opt_auth_token(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    b.values["auth_token"] = Secret(w[1].encode("ascii"))


def _opt_auth_token_user(b: _Builder, w: list[str]) -> None:
    _arity(w, 1, 1)
    try:
        user = base64.b64decode(w[1], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _Invalid("not base64 of a UTF-8 user name") from exc
    b.values["auth_token_user"] = user


_ALLOWED: dict[str, Callable[[_Builder, list[str]], None]] = {
    "ifconfig": _opt_ifconfig,
    "ifconfig-ipv6": _opt_ifconfig_ipv6,
    "topology": _opt_topology,
    "route-gateway": _opt_route_gateway,
    "route": _opt_route,
    "route-ipv6": _opt_route_ipv6,
    "redirect-gateway": _opt_redirect_gateway,
    "dhcp-option": _opt_dhcp_option,
    "peer-id": _opt_peer_id,
    "cipher": _opt_cipher,
    "protocol-flags": _opt_protocol_flags,
    "key-derivation": _opt_key_derivation,
    "ping": _seconds("ping"),
    "ping-restart": _seconds("ping_restart"),
    "ping-exit": _seconds("ping_exit"),
    "tun-mtu": _opt_tun_mtu,
    "explicit-exit-notify": _opt_explicit_exit_notify,
    "comp-lzo": _opt_compression,
    "compress": _opt_compression,
    "auth-token": _opt_auth_token,
    "auth-token-user": _opt_auth_token_user,
}


class FilterVerdict(enum.Enum):
    KEEP = "keep"
    DROP = "drop"


def apply_pull_filters(config: Config, line: str) -> FilterVerdict:
    """First matching `pull-filter` prefix wins; `reject` ends the session."""
    for pull_filter in config.pull_filters:
        if line.startswith(pull_filter.text):
            if pull_filter.action is PullFilterAction.REJECT:
                raise RemoteProtocolError(f"pushed option rejected by pull-filter: {line!r}")
            if pull_filter.action is PullFilterAction.IGNORE:
                return FilterVerdict.DROP
            return FilterVerdict.KEEP
    return FilterVerdict.KEEP


def parse_pushed_options(lines: tuple[str, ...] | list[str], config: Config) -> PushedOptions:
    """Apply the allow-list, `route-nopull` and `pull-filter` to the option lines of one
    complete PUSH_REPLY. Raises `RemoteProtocolError` for options that must end the session;
    anything else unusable is recorded in `ignored`."""
    b = _Builder(config)
    for raw in lines:
        line = raw.lstrip()
        if not line:
            continue
        if apply_pull_filters(config, line) is FilterVerdict.DROP:
            b.ignored.append(IgnoredOption(line, "removed by pull-filter ignore"))
            continue
        try:
            words = parse_line(line)
        except DecodeError as exc:
            b.ignored.append(IgnoredOption(line, str(exc)))
            continue
        if not words:
            continue
        name = words[0]
        if config.route_nopull and name in ROUTE_NOPULL_DROPS:
            b.ignored.append(IgnoredOption(line, "route-nopull"))
        elif name in _ALLOWED:
            try:
                _ALLOWED[name](b, words)
            except _Invalid as exc:
                b.ignored.append(IgnoredOption(line, f"{name}: {exc}"))
        elif name in HARMLESS:
            b.ignored.append(IgnoredOption(line, HARMLESS[name]))
        else:
            b.ignored.append(IgnoredOption(line, "not on the allow-list of pushable options"))
    return PushedOptions(
        routes=tuple(b.routes),
        routes_ipv6=tuple(b.routes_ipv6),
        dhcp_options=tuple(b.dhcp_options),
        ignored=tuple(b.ignored),
        **b.values,  # type: ignore[arg-type]
    )
