"""Pushed options: the allow-list, `route-nopull` and `pull-filter` over one PUSH_REPLY.

OpenVPN references: `options.c` (`apply_push_options`, the `pull_mode` checks of `add_option`),
`options_util.c` (`apply_pull_filter`), `init.c` (`pull_permission_mask`: what `route-nopull`
removes). Framing and classifying control messages is messages.py.

One grammar: a pushed option line is read exactly as the same line in a config file, by the
config's lexer (`split_line`), its directive table (argument counts) and its handlers and value
parsers (`config/handlers.py`, `config/values.py`), into the config's model types, with the same
messages. This module only decides what a server may push: the options we apply become typed
fields of the frozen `PushedOptions`; harmless options we do not act on are recorded in `ignored`
with a reason, as are allowed options whose value is refused (OpenVPN logs those and carries on).
Only a pushed cipher outside our `data-ciphers`, real compression we may not do, or a
`pull-filter reject` match end the session (`RemoteProtocolError`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from .config import handlers, values
from .config.context import Context, Handler, Setting, error
from .config.lexer import Directive, Token, split_line
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
    RouteGatewayDhcp,
    RouteIPv6,
    Secret,
    Topology,
)
from .config.parse import handle
from .errors import ConfigError, DecodeError, RemoteProtocolError

# --------------------------------------------------------------------------- option lines


def parse_line(line: str) -> list[str]:
    """Split one pushed option line into words, exactly as a config line is read (OpenVPN
    `parse_line`: quotes, backslash escapes, `#`/`;` comments); a lexical error is the peer's,
    so it is a `DecodeError` here."""
    return [token.text for token in _tokens(line)]


def _tokens(line: str) -> list[Token]:
    try:
        return split_line(line, 1)
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
    block_ipv6: bool = False
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
    notes: tuple[str, ...] = field(default=(), compare=False)  # applied, with a remark

    @property
    def uses_ekm(self) -> bool:
        """The server asked for TLS-EKM data keys (`key-derivation tls-ekm` or the flag)."""
        return self.key_derivation == "tls-ekm" or "tls-ekm" in self.protocol_flags

    @property
    def cc_exit(self) -> bool:
        return "cc-exit" in self.protocol_flags

    @property
    def dynamic_tls_crypt(self) -> bool:
        """Renegotiations under the session's dynamic tls-crypt key (dyncrypt.py)."""
        return "dyn-tls-crypt" in self.protocol_flags


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


# Options a server may push whose values the config parser reads: the directive table gives
# the argument counts, the handler the typed value (the same code as for a config file).
FROM_CONFIG_GRAMMAR = frozenset(
    {
        "ifconfig",
        "ifconfig-ipv6",
        "topology",
        "route",
        "route-ipv6",
        "route-gateway",
        "redirect-gateway",
        "dhcp-option",
        "ping",
        "ping-restart",
        "ping-exit",
        "tun-mtu",
        "explicit-exit-notify",
        "comp-lzo",
        "compress",
        "block-ipv6",
    }
)

_REAL_COMPRESSION = frozenset({Compression.LZO, Compression.LZ4, Compression.LZ4_V2})


def _no_files(name: str) -> bytes:
    raise ConfigError(f"a pushed option cannot name a file ({name!r})")


# Options only a server sets (the config table rejects them): their handlers, with the same
# value parsers, and their argument counts.
def _h_peer_id(ctx: Context, d: Directive) -> None:
    ctx.put(d, "peer_id", values.integer(d, 0, hi=0xFFFFFF))  # 24 bits (ssl_pkt.h)


def _h_cipher(ctx: Context, d: Directive) -> None:
    ctx.put(d, "cipher", d.args[0].text)  # checked against our data-ciphers: fatal if unknown


def _h_protocol_flags(ctx: Context, d: Directive) -> None:
    ctx.put(d, "protocol_flags", frozenset(d.argv))


def _h_key_derivation(ctx: Context, d: Directive) -> None:
    ctx.put(d, "key_derivation", values.choice(d, 0, ("tls-ekm",)))


def _h_auth_token(ctx: Context, d: Directive) -> None:
    ctx.put(d, "auth_token", Secret(d.args[0].text.encode("utf-8")))


def _h_auth_token_user(ctx: Context, d: Directive) -> None:
    ctx.put(d, "auth_token_user", values.base64_text(d, 0))


PUSH_ONLY: dict[str, tuple[int, int, Handler]] = {
    "peer-id": (1, 1, _h_peer_id),
    "cipher": (1, 1, _h_cipher),
    "protocol-flags": (0, 16, _h_protocol_flags),
    "key-derivation": (1, 1, _h_key_derivation),
    "auth-token": (1, 1, _h_auth_token),
    "auth-token-user": (1, 1, _h_auth_token_user),
}


def _run_push_only(ctx: Context, d: Directive) -> None:
    low, high, handler = PUSH_ONLY[d.name]
    if not low <= len(d.args) <= high:
        raise error(d, f"expects {low} to {high} arguments, got {len(d.args)}")
    handler(ctx, d)


@dataclass(slots=True)
class _Builder:
    config: Config
    values: dict[str, object] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    routes_ipv6: list[RouteIPv6] = field(default_factory=list)
    dhcp_options: list[DhcpOption] = field(default_factory=list)
    ignored: list[IgnoredOption] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def take(self, line: str, setting: Setting) -> None:
        """One value a handler recorded, into its `PushedOptions` field."""
        key, value = setting.key, setting.value
        if key == "routes" and isinstance(value, Route):
            self.routes.append(value)
        elif key == "routes_ipv6" and isinstance(value, RouteIPv6):
            self.routes_ipv6.append(value)
        elif key == "dhcp_options" and isinstance(value, DhcpOption):
            self.dhcp_options.append(value)
        elif key == "route_gateway" and value is RouteGatewayDhcp.DHCP:
            self.ignored.append(IgnoredOption(line, "route-gateway dhcp is for tap devices"))
        elif key == "redirect_gateway" and isinstance(value, frozenset):
            self.values[key] = RedirectGateway(value)
        elif key in ("ping", "ping_restart", "ping_exit"):
            self.values[key] = 0.0 if value is None else value  # pushed 0: off, not "unset"
        elif key == "compression" and value in _REAL_COMPRESSION:
            if self.config.allow_compression is AllowCompression.NO:
                raise RemoteProtocolError(
                    f"server pushed {line!r} but compression is not allowed (allow-compression no)"
                )
            self.values[key] = value
        elif key == "cipher" and isinstance(value, str):
            if value.upper() not in {c.upper() for c in self.config.data_ciphers}:
                raise RemoteProtocolError(
                    f"server pushed cipher {value!r}, which is not in our data-ciphers "
                    f"({':'.join(self.config.data_ciphers)})"
                )
            self.values[key] = value.upper()
        elif key in _SCALAR_FIELDS:
            self.values[key] = value
        else:  # a handler recorded something PushedOptions has no field for
            self.ignored.append(IgnoredOption(line, f"{setting.directive} is not applied"))


_SCALAR_FIELDS = frozenset(
    {
        "ifconfig",
        "ifconfig_ipv6",
        "topology",
        "route_gateway",
        "tun_mtu",
        "explicit_exit_notify",
        "compression",
        "peer_id",
        "protocol_flags",
        "key_derivation",
        "auth_token",
        "auth_token_user",
        "block_ipv6",
    }
)


def _known_redirect_flags(b: _Builder, line: str, d: Directive) -> Directive:
    """`redirect-gateway` with its unknown flags left out, each recorded (OpenVPN logs
    "unknown --redirect-gateway flag" and keeps the redirect with the flags before it)."""
    kept = []
    for i, token in enumerate(d.args):
        try:
            values.choice(d, i, handlers.REDIRECT_FLAGS)
        except ConfigError as exc:
            b.ignored.append(IgnoredOption(line, f"redirect-gateway: {exc.message}"))
        else:
            kept.append(token)
    return Directive(d.name, tuple(kept), d.line, d.column)


def _apply(b: _Builder, line: str, d: Directive) -> None:
    ctx = Context(_no_files)
    if d.name == "redirect-gateway":
        d = _known_redirect_flags(b, line, d)
    try:
        if d.name in PUSH_ONLY:
            _run_push_only(ctx, d)
        else:
            handle(ctx, d)
    except ConfigError as exc:
        b.ignored.append(IgnoredOption(line, f"{d.name}: {exc.message}"))
        return
    for setting in ctx.settings:
        b.take(line, setting)
    for warning in ctx.warnings:
        if d.name == "redirect-gateway":  # a flag the runtime does not act on
            b.ignored.append(IgnoredOption(line, warning.message))
        else:
            b.notes.append(f"{line}: {warning.message}")


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
            tokens = _tokens(line)
        except DecodeError as exc:
            b.ignored.append(IgnoredOption(line, str(exc)))
            continue
        if not tokens:
            continue
        d = Directive(tokens[0].text, tuple(tokens[1:]), 1, tokens[0].column)
        if config.route_nopull and d.name in ROUTE_NOPULL_DROPS:
            b.ignored.append(IgnoredOption(line, "route-nopull"))
        elif d.name in FROM_CONFIG_GRAMMAR or d.name in PUSH_ONLY:
            _apply(b, line, d)
        elif d.name in HARMLESS:
            b.ignored.append(IgnoredOption(line, HARMLESS[d.name]))
        else:
            b.ignored.append(IgnoredOption(line, "not on the allow-list of pushable options"))
    return PushedOptions(
        routes=tuple(b.routes),
        routes_ipv6=tuple(b.routes_ipv6),
        dhcp_options=tuple(b.dhcp_options),
        ignored=tuple(b.ignored),
        notes=tuple(b.notes),
        **b.values,  # type: ignore[arg-type]
    )
