"""The parsed configuration: frozen, typed, one slot per directive.

This is the contract between the config parser and everything that uses a configuration (the
engine, the runtimes, `format_config`). Values are already normalised: ip addresses are
`ipaddress` objects, durations are seconds, names are upper-case where OpenVPN is
case-insensitive. Defaults are OpenVPN 2.6's client defaults unless a comment says otherwise.

Diagnostics (`ignored`, `warnings`) do not take part in equality, so that
`parse_config(format_config(cfg)) == cfg` holds although line numbers change.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True, slots=True)
class Secret:
    """Bytes that must never appear in logs or reprs (keys, passwords)."""

    value: bytes

    def __repr__(self) -> str:
        return f"Secret(<{len(self.value)} bytes redacted>)"

    __str__ = __repr__


# --------------------------------------------------------------------------- transport


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


class AddressFamily(enum.Enum):
    ANY = "any"  # "udp"/"tcp": whatever the name resolves to, in the resolver's order
    IPV4 = "ipv4"  # "udp4"/"tcp4"
    IPV6 = "ipv6"  # "udp6"/"tcp6"


@dataclass(frozen=True, slots=True)
class Proto:
    transport: Transport = Transport.UDP
    family: AddressFamily = AddressFamily.ANY


@dataclass(frozen=True, slots=True)
class Remote:
    """One server to try, with the port and protocol already resolved from the defaults."""

    host: str  # a hostname or an IP literal, as written
    port: int = 1194
    proto: Proto = Proto()


# --------------------------------------------------------------------------- proxies


@dataclass(frozen=True, slots=True)
class ProxyCredentials:
    """A proxy's user name and password (HTTP basic auth, SOCKS5 RFC 1929)."""

    username: str
    password: Secret


@dataclass(frozen=True, slots=True)
class HttpProxy:
    """`http-proxy HOST PORT [authfile [basic]]` with its `http-proxy-option`s (proxy.c)."""

    host: str
    port: int
    credentials: ProxyCredentials | None = None  # None: no Proxy-Authorization header
    version: str = "1.0"  # `http-proxy-option VERSION`: the CONNECT line's HTTP version
    agent: str | None = None  # `http-proxy-option AGENT`
    # `http-proxy-option CUSTOM-HEADER name [content]` (also EXT1/EXT2); content None: the
    # whole header line is in the name
    custom_headers: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class SocksProxy:
    """`socks-proxy HOST [PORT [authfile]]`: SOCKS5 (RFC 1928), user/password (RFC 1929)."""

    host: str
    port: int = 1080
    credentials: ProxyCredentials | None = None


Proxy = HttpProxy | SocksProxy


# --------------------------------------------------------------------------- control channel


class KeyDirection(enum.IntEnum):
    """Which half of a static key we send with (OpenVPN `key-direction`, crypto.c)."""

    NORMAL = 0  # send keys[0], receive keys[1]
    INVERSE = 1  # send keys[1], receive keys[0]


@dataclass(frozen=True, slots=True)
class StaticKey:
    """The 256 bytes of an "OpenVPN Static key V1" file: keys[0] then keys[1] (cipher, hmac)."""

    key: Secret

    def __post_init__(self) -> None:
        if len(self.key.value) != 256:
            raise ValueError("an OpenVPN static key is exactly 256 bytes")


@dataclass(frozen=True, slots=True)
class TlsAuth:
    key: StaticKey
    direction: KeyDirection | None = None  # None: bidirectional (both ways keys[0])


@dataclass(frozen=True, slots=True)
class TlsCrypt:
    key: StaticKey  # the client is always INVERSE


@dataclass(frozen=True, slots=True)
class TlsCryptV2:
    key: StaticKey  # Kc, used like a tls-crypt key
    wrapped_key: bytes  # WKc, opaque to the client, sent verbatim


ControlChannelProtection = TlsAuth | TlsCrypt | TlsCryptV2


class TlsVersion(enum.Enum):
    TLS1_0 = "1.0"
    TLS1_1 = "1.1"
    TLS1_2 = "1.2"
    TLS1_3 = "1.3"


class X509NameKind(enum.Enum):
    SUBJECT = "subject"  # the whole RFC 2253 subject
    NAME = "name"  # the CN (OpenVPN semantics)
    NAME_PREFIX = "name-prefix"


@dataclass(frozen=True, slots=True)
class VerifyX509Name:
    name: str
    kind: X509NameKind = X509NameKind.SUBJECT


@dataclass(frozen=True, slots=True)
class AuthUserPass:
    """Credentials for `auth-user-pass`. A `None` field is asked for at run time."""

    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True, slots=True)
class StaticChallenge:
    """`static-challenge TEXT ECHO`: a one-time code asked with the password (SCRV1)."""

    text: str  # shown when asking
    echo: bool  # the code may be shown while typed


class AuthRetry(enum.Enum):
    NONE = "none"
    NOINTERACT = "nointeract"
    INTERACT = "interact"


# --------------------------------------------------------------------------- tunnel


class Topology(enum.Enum):
    NET30 = "net30"
    P2P = "p2p"
    SUBNET = "subnet"


@dataclass(frozen=True, slots=True)
class IfConfig:
    """`ifconfig local remote-or-netmask`: the second address is read according to topology."""

    local: ipaddress.IPv4Address
    remote_or_netmask: ipaddress.IPv4Address


@dataclass(frozen=True, slots=True)
class IfConfigIPv6:
    interface: ipaddress.IPv6Interface  # address/prefix
    remote: ipaddress.IPv6Address | None = None


class RouteGatewayKeyword(enum.Enum):
    VPN_GATEWAY = "vpn_gateway"
    NET_GATEWAY = "net_gateway"
    REMOTE_HOST = "remote_host"


@dataclass(frozen=True, slots=True)
class Route:
    """`route network [netmask] [gateway] [metric]`; `network` may be a hostname only in files."""

    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | RouteGatewayKeyword | None = None  # None: route-gateway
    metric: int | None = None


@dataclass(frozen=True, slots=True)
class RouteIPv6:
    network: ipaddress.IPv6Network
    gateway: ipaddress.IPv6Address | None = None
    metric: int | None = None


class RouteGatewayDhcp(enum.Enum):
    DHCP = "dhcp"


@dataclass(frozen=True, slots=True)
class RedirectGateway:
    """`redirect-gateway [flags]`: def1, bypass-dhcp, bypass-dns, local, autolocal, block-local,
    ipv6, !ipv4. Stored as written (lower-case), in a frozenset."""

    flags: frozenset[str] = frozenset()


class PullFilterAction(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class PullFilter:
    action: PullFilterAction
    text: str  # prefix matched against each pushed option line


@dataclass(frozen=True, slots=True)
class DhcpOption:
    kind: str  # upper-case: DNS, DNS6, DOMAIN, DOMAIN-SEARCH, NTP, WINS, DISABLE-NBT, ...
    value: str | None = None


class Compression(enum.Enum):
    """The data-channel compression framing (never actual compression on send)."""

    NONE = "none"  # no framing byte
    LZO_NO = "comp-lzo no"  # 0xFA prefix
    LZO = "comp-lzo"  # 0xFA on send, LZO accepted on receive only if allowed
    STUB = "compress"  # swap mode with 0xFB
    STUB_V2 = "compress stub-v2"  # escape 0x50 only
    LZ4 = "compress lz4"
    LZ4_V2 = "compress lz4-v2"


class AllowCompression(enum.Enum):
    NO = "no"
    ASYM = "asym"
    YES = "yes"


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    packets: int = 64
    seconds: float = 15.0


# --------------------------------------------------------------------------- diagnostics


@dataclass(frozen=True, slots=True)
class IgnoredDirective:
    """A directive accepted but without effect here (e.g. `verb`, `user`, script hooks)."""

    name: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """A directive accepted with a warning, e.g. deprecated and mapped to its modern meaning."""

    directive: str
    line: int
    message: str


# --------------------------------------------------------------------------- the whole config


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    # role
    client: bool = False  # `client` = pull + tls-client
    pull: bool = False
    tls_client: bool = False

    # remotes (`remote`, `<connection>`; port/proto defaults already applied)
    remotes: tuple[Remote, ...] = ()
    remote_random: bool = False
    remote_random_hostname: bool = False  # a random label before each hostname looked up
    nobind: bool = False
    local: str | None = None
    lport: int | None = None
    float_: bool = False  # `float`
    proxy: Proxy | None = None  # every remote is reached through it (TCP only)

    # device
    dev: str = "tun"  # as written: "tun", "tun0", "null"
    tun_mtu: int = 1500
    link_mtu: int | None = None
    mssfix: int | None = None

    # PKI
    ca: str | None = None  # PEM text, one or more certificates
    cert: str | None = None  # PEM text
    key: Secret | None = None  # PEM text of the private key, as written (maybe encrypted)
    pkcs12: Secret | None = None  # DER, as written (maybe protected by a password)
    # What unlocks an encrypted `key` or `pkcs12`: the first line of the `askpass` file, or
    # what a runtime asked for (config/unlock.py). Not part of equality: it is an input to the
    # key material, not a setting, and OpenVPN has no inline form that format_config could write.
    key_passphrase: Secret | None = field(default=None, compare=False)
    extra_certs: str | None = None
    peer_fingerprints: tuple[bytes, ...] = ()  # SHA-256 digests
    remote_cert_tls_server: bool = False  # `remote-cert-tls server` (or `ns-cert-type server`)
    # `remote-cert-ku`: None = no check; () = the extension must be present; else the key usage
    # must hold every bit of one value (OpenVPN's bit order: digitalSignature = 0x80)
    remote_cert_ku: tuple[int, ...] | None = None
    remote_cert_eku: str | None = None  # `remote-cert-eku`, as a dotted OID
    verify_x509_name: VerifyX509Name | None = None
    tls_version_min: TlsVersion | None = None
    tls_version_min_or_highest: bool = False
    tls_version_max: TlsVersion | None = None
    tls_cipher: str | None = None  # OpenSSL cipher list for TLS <= 1.2
    tls_ciphersuites: str | None = None  # TLS 1.3 suites

    # control-channel protection (tls-auth | tls-crypt | tls-crypt-v2 | none)
    tls_protection: ControlChannelProtection | None = None
    secret: StaticKey | None = None  # static-key mode (rejected by validation for now)
    secret_direction: KeyDirection | None = None

    # data channel
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    data_ciphers_fallback: str | None = None
    cipher: str | None = None  # legacy `cipher`
    auth: str = "SHA1"  # digest for tls-auth and CBC data HMAC
    compression: Compression = Compression.NONE
    allow_compression: AllowCompression = AllowCompression.NO
    replay_window: ReplayWindow = ReplayWindow()
    mute_replay_warnings: bool = False

    # user/password
    auth_user_pass: AuthUserPass | None = None
    auth_nocache: bool = False
    auth_retry: AuthRetry = AuthRetry.NONE
    static_challenge: StaticChallenge | None = None

    # timers (seconds; None = off / infinite)
    ping: float | None = None
    ping_restart: float | None = None
    ping_exit: float | None = None
    hand_window: float = 60.0
    tran_window: float = 3600.0
    tls_timeout: float = 2.0
    reneg_sec: float | None = 3600.0
    reneg_sec_min: float | None = None  # reneg-sec max min: per session in min..max
    reneg_bytes: int | None = None
    reneg_pkts: int | None = None
    connect_retry: float = 1.0
    connect_retry_max_delay: float = 300.0
    connect_retry_max: int | None = None  # None: unlimited
    connect_timeout: float = 120.0
    server_poll_timeout: float = 120.0
    resolv_retry: float | None = None  # None: infinite
    explicit_exit_notify: int = 0

    # addresses and routes
    topology: Topology | None = None
    ifconfig: IfConfig | None = None
    ifconfig_ipv6: IfConfigIPv6 | None = None
    routes: tuple[Route, ...] = ()
    routes_ipv6: tuple[RouteIPv6, ...] = ()
    route_gateway: ipaddress.IPv4Address | RouteGatewayDhcp | None = None
    route_metric: int | None = None
    route_delay: float | None = None
    redirect_gateway: RedirectGateway | None = None
    route_nopull: bool = False
    block_ipv6: bool = False  # IPv6 read from the tun is answered with ICMPv6 no-route
    pull_filters: tuple[PullFilter, ...] = ()
    dhcp_options: tuple[DhcpOption, ...] = ()

    # behaviour flags with no protocol effect for us
    persist_key: bool = False
    persist_tun: bool = False

    # diagnostics: not part of equality
    ignored: tuple[IgnoredDirective, ...] = field(default=(), compare=False)
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False)
