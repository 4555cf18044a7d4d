"""The one place that turns recorded settings into a `Config`: duplicates, conflicts, defaults,
and the checks that make a config usable by this client.

Rules for a key set more than once (MirageVPN's resolve_conflict, with OpenVPN's last-wins where
that is safe):
- list keys append (`remote`, `route`, `route-ipv6`, `dhcp-option`, `pull-filter`,
  `peer-fingerprint`; `redirect-gateway` flags are joined, as OpenVPN ORs them);
- identical repeats are fine;
- key material, credentials and identity checks (`ca`, `cert`, `key`, `pkcs12`, `extra-certs`,
  the tls-auth/tls-crypt/secret keys, `auth-user-pass`, `verify-x509-name`, `ifconfig`) must not
  change: a second, different value is an error naming both lines, because silently taking the
  last one hides a mistake in what the connection trusts;
- everything else: the last one wins (as OpenVPN), and a warning names the line it overrides.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from ..errors import ConfigError
from . import keys, proxies, unlock
from .context import Context, Setting
from .handlers import RawRemote, TlsVersionMin
from .model import (
    AddressFamily,
    AllowCompression,
    Compression,
    Config,
    ConfigWarning,
    ControlChannelProtection,
    Proto,
    RedirectGateway,
    Remote,
    Secret,
    StaticKey,
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
)

LIST_KEYS = frozenset(
    {"routes", "routes_ipv6", "dhcp_options", "pull_filters", "peer_fingerprints"}
)
STRICT_KEYS = frozenset(
    {
        "ca",
        "cert",
        "key",
        "pkcs12",
        "key_passphrase",
        "extra_certs",
        "tls_auth",
        "tls_crypt",
        "tls_crypt_v2",
        "secret",
        "auth_user_pass",
        "verify_x509_name",
        "ifconfig",
        "ifconfig_ipv6",
    }
)
# Keys that do not map 1:1 onto a model field.
_DERIVED = frozenset(
    {
        "remote",
        "proto",
        "port",
        "rport",
        "lport",
        "dev_type",
        "tls_auth",
        "tls_crypt",
        "tls_crypt_v2",
        "key_direction",
        "tls_version_min",
        "redirect_gateway",
        "secret",
    }
)
_CONNECTION_LOCAL = frozenset({"remote", "proto", "port", "rport"})
_PROTECTION_NAMES = {
    "tls_auth": "tls-auth",
    "tls_crypt": "tls-crypt",
    "tls_crypt_v2": "tls-crypt-v2",
}


def conflict(later: Setting, earlier: Setting, what: str) -> ConfigError:
    return ConfigError(
        f"{what} (line {earlier.line}: {earlier.directive}; line {later.line}: {later.directive})",
        line=later.line,
        column=later.column,
        directive=later.directive,
    )


def resolve(ctx: Context) -> Config:
    glob: dict[str, list[Setting]] = defaultdict(list)
    for s in ctx.settings:
        if s.key in proxies.KEYS:
            continue  # proxies.build: per-block rules of its own
        if s.connection is None or s.key not in _CONNECTION_LOCAL:
            glob[s.key].append(s)
    _check_connection_settings([s for s in ctx.settings if s.key not in proxies.KEYS])

    fields: dict[str, object] = {}
    for key, items in glob.items():
        if key in LIST_KEYS:
            fields[key] = tuple(s.value for s in items)
            continue
        if key in ("remote", "redirect_gateway"):
            continue  # lists with their own rules below
        first = items[0]
        for s in items[1:]:
            if s.value == first.value:
                continue
            if key in STRICT_KEYS:
                raise conflict(s, first, f"{s.directive} is given twice with different values")
        final = items[-1]
        changed = [s for s in items if s.value != final.value]
        if changed:
            ctx.warn_setting(final, f"overrides line {changed[-1].line} (the last one wins)")
        if key not in _DERIVED:
            fields[key] = final.value

    def last(key: str) -> Setting | None:
        items = glob.get(key)
        return items[-1] if items else None

    fields["remotes"] = remotes = _remotes(ctx.settings)
    fields["proxy"] = proxies.build(ctx, remotes)
    _protection(glob, fields, last("key_direction"))
    if (lport := _last_of(glob, "port", "lport")) is not None:
        fields["lport"] = lport.value
    if (tvm := last("tls_version_min")) is not None:
        assert isinstance(tvm.value, TlsVersionMin)
        fields["tls_version_min"] = tvm.value.version
        fields["tls_version_min_or_highest"] = tvm.value.or_highest
    if "redirect_gateway" in glob:
        flags: frozenset[str] = frozenset()
        for s in glob["redirect_gateway"]:
            assert isinstance(s.value, frozenset)
            flags |= s.value
        fields["redirect_gateway"] = RedirectGateway(flags)
    _compression(glob, fields)
    _passphrase(ctx, glob, fields)
    _bundle_ca(ctx, glob, fields)
    _advice(ctx, glob, fields)

    try:
        config = Config(**fields, ignored=tuple(ctx.ignored), warnings=tuple(ctx.warnings))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:  # a bug in a handler, not the user's fault
        raise ConfigError(f"internal error building the configuration: {exc}") from exc
    validate(config, glob)
    return config


def _locked(fields: dict[str, object]) -> list[str]:
    """The model fields whose key material needs a passphrase: "key", "pkcs12"."""
    key, bundle = fields.get("key"), fields.get("pkcs12")
    found = []
    if isinstance(key, Secret) and unlock.key_is_encrypted(key.value):
        found.append("key")
    if isinstance(bundle, Secret) and unlock.pkcs12_is_locked(bundle.value):
        found.append("pkcs12")
    return found


def _passphrase(ctx: Context, glob: dict[str, list[Setting]], fields: dict[str, object]) -> None:
    """An encrypted key or a protected bundle: with `askpass FILE` the passphrase must unlock
    it (an error at the askpass line if not); without, it is asked at run time (a warning)."""
    passphrase = fields.get("key_passphrase")
    assert passphrase is None or isinstance(passphrase, Secret)
    try:
        locked = _locked(fields)
    except keys.KeyMaterialError as exc:
        raise _fail(glob, "pkcs12", str(exc)) from None
    if not locked:
        if passphrase is not None:
            ctx.warn_setting(
                glob["key_passphrase"][-1], "nothing here is encrypted: the passphrase is unused"
            )
        return
    what = "the private key" if locked[0] == "key" else "the PKCS#12 bundle"
    if passphrase is None:
        ctx.warn_setting(
            glob[locked[0]][-1],
            f"{what} is encrypted and there is no 'askpass FILE': miragevpn-client asks for "
            "the passphrase on its terminal; the gateway cannot ask (put the passphrase on "
            "the first line of a file and add 'askpass FILE')",
        )
        return
    for field_name in locked:
        material = fields[field_name]
        assert isinstance(material, Secret)
        try:
            if field_name == "key":
                unlock.load_private_key(material.value, passphrase)
            else:
                unlock.load_pkcs12(material.value, passphrase)
        except unlock.PassphraseError as exc:
            raise _fail(glob, "key_passphrase", str(exc)) from None
        except keys.KeyMaterialError as exc:
            raise _fail(glob, field_name, str(exc)) from None


def _bundle_ca(ctx: Context, glob: dict[str, list[Setting]], fields: dict[str, object]) -> None:
    """Without `ca`, a PKCS#12 bundle's CA certificates are the trust anchors (as OpenVPN,
    ssl_openssl.c tls_ctx_load_pkcs12). A locked bundle without a passphrase is read when it
    is unlocked at run time."""
    bundle = fields.get("pkcs12")
    if fields.get("ca") is not None or not isinstance(bundle, Secret):
        return
    passphrase = fields.get("key_passphrase")
    assert passphrase is None or isinstance(passphrase, Secret)
    try:
        if passphrase is None and unlock.pkcs12_is_locked(bundle.value):
            return
        ca = unlock.pkcs12_ca_pem(bundle.value, passphrase)
    except keys.KeyMaterialError as exc:
        raise _fail(glob, "pkcs12", str(exc)) from None
    if ca is not None:
        fields["ca"] = ca  # the checker's summary says where they came from


def _last_of(glob: dict[str, list[Setting]], *names: str) -> Setting | None:
    candidates = [s for name in names for s in glob.get(name, [])]
    return max(candidates, key=lambda s: s.line) if candidates else None


def _check_connection_settings(settings: list[Setting]) -> None:
    """Settings inside <connection> blocks other than remote/proto/port must agree (the last
    one of each block counts: inside a block, the last one wins)."""
    final: dict[tuple[int, str], Setting] = {}
    for s in settings:
        if s.connection is not None and s.key not in _CONNECTION_LOCAL:
            final[(s.connection, s.key)] = s
    seen: dict[str, Setting] = {}
    for s in final.values():
        other = seen.setdefault(s.key, s)
        if other.value != s.value:
            raise conflict(
                s, other, f"per-connection {s.directive} values are not supported; make them equal"
            )


def _remotes(settings: list[Setting]) -> tuple[Remote, ...]:
    """Apply the port/proto defaults to each remote (OpenVPN connection_entry_load_re).

    Plain `remote`s take the final global proto/port; a <connection> block starts from the
    global values seen before the block (OpenVPN copies them when it reads the block).
    """
    plain = [s for s in settings if s.key == "remote" and s.connection is None]
    in_blocks = [s for s in settings if s.key == "remote" and s.connection is not None]
    if plain and in_blocks:
        raise conflict(
            in_blocks[0],
            plain[0],
            "remote outside <connection> blocks would be ignored by OpenVPN; "
            "move it into a <connection> block",
        )
    if in_blocks:
        by_block: dict[int, list[Setting]] = defaultdict(list)
        for s in in_blocks:
            assert s.connection is not None
            by_block[s.connection].append(s)
        for items in by_block.values():
            if len(items) > 1:
                raise conflict(
                    items[1], items[0], "each <connection> block must have exactly one remote"
                )

    # One pass, in config order: the global proto/port in force when each block starts, and
    # each block's own (the last one of each wins, port and rport alike).
    glob: dict[str, Setting] = {}
    at_block_start: dict[int, dict[str, Setting]] = {}
    in_block: dict[int, dict[str, Setting]] = defaultdict(dict)
    for s in settings:
        slot = "proto" if s.key == "proto" else "port" if s.key in ("port", "rport") else None
        if s.connection is None:
            if slot is not None:
                glob[slot] = s
            continue
        at_block_start.setdefault(s.connection, dict(glob))
        if slot is not None:
            in_block[s.connection][slot] = s

    remotes: list[Remote] = []
    for s in plain + in_blocks:
        raw = s.value
        assert isinstance(raw, RawRemote)
        found = glob
        if s.connection is not None:
            found = at_block_start[s.connection] | in_block[s.connection]
        proto = found["proto"].value if "proto" in found else Proto()
        port = found["port"].value if "port" in found else 1194
        assert isinstance(proto, Proto) and isinstance(port, int)
        remote = Remote(raw.host, raw.port or port, raw.proto or proto)
        _check_literal_family(s, remote)
        remotes.append(remote)
    return tuple(remotes)


_FAMILY_VERSION = {AddressFamily.IPV4: 4, AddressFamily.IPV6: 6}


def _check_literal_family(s: Setting, remote: Remote) -> None:
    """An IP literal of the other family than a `udp4`/`tcp6`-style proto can never be
    reached (OpenVPN's getaddrinfo fails on it for ever): say so at the remote's line."""
    wanted = _FAMILY_VERSION.get(remote.proto.family)
    try:
        literal = ipaddress.ip_address(remote.host)
    except ValueError:
        return
    if wanted is not None and literal.version != wanted:
        raise ConfigError(
            f"{remote.host} is an IPv{literal.version} address but the protocol is "
            f"{remote.proto.transport.value}{wanted} (IPv{wanted} only)",
            line=s.line,
            column=s.column,
            directive=s.directive,
        )


def _protection(
    glob: dict[str, list[Setting]], fields: dict[str, object], direction: Setting | None
) -> None:
    present = [glob[k][-1] for k in ("tls_auth", "tls_crypt", "tls_crypt_v2") if k in glob]
    if len(present) > 1:
        present.sort(key=lambda s: s.line)
        raise conflict(
            present[1],
            present[0],
            f"{_PROTECTION_NAMES[present[0].key]} and {_PROTECTION_NAMES[present[1].key]} "
            "are mutually exclusive",
        )
    key_direction = direction.value if direction else None
    protection: ControlChannelProtection | None = None
    if present:
        s = present[0]
        if s.key == "tls_auth":
            assert isinstance(s.value, StaticKey)
            protection = TlsAuth(s.value, key_direction)  # type: ignore[arg-type]
        elif s.key == "tls_crypt":
            assert isinstance(s.value, StaticKey)
            protection = TlsCrypt(s.value)
        else:
            pair = s.value
            assert isinstance(pair, tuple)
            kc, wkc = pair
            assert isinstance(kc, StaticKey) and isinstance(wkc, bytes)
            protection = TlsCryptV2(kc, wkc)
    fields["tls_protection"] = protection
    if "secret" in glob:
        fields["secret"] = glob["secret"][-1].value
        fields["secret_direction"] = key_direction


def _compression(glob: dict[str, list[Setting]], fields: dict[str, object]) -> None:
    compression = fields.get("compression", Compression.NONE)
    allow = glob.get("allow_compression")
    real = compression in (Compression.LZO, Compression.LZ4, Compression.LZ4_V2)
    if allow is None:
        if real:
            # OpenVPN 2.6: an explicit compression option without allow-compression means
            # "accept compressed packets, never send them" (asym).
            fields["allow_compression"] = AllowCompression.ASYM
    elif allow[-1].value == AllowCompression.NO and real:
        comp = glob["compression"][-1]
        raise conflict(
            comp, allow[-1], "'allow-compression no' conflicts with enabling compression"
        )


def _advice(ctx: Context, glob: dict[str, list[Setting]], fields: dict[str, object]) -> None:
    """Warnings OpenVPN 2.6 gives too: settings that do less than they seem to."""
    challenge = _at(glob, "static_challenge")
    if challenge is not None and "auth_user_pass" not in glob:
        ctx.warn_setting(challenge, "has no effect without auth-user-pass (as in OpenVPN)")
    cipher = _at(glob, "cipher")
    ciphers = fields.get("data_ciphers", Config().data_ciphers)
    assert isinstance(ciphers, tuple)
    if cipher is not None and cipher.value not in ciphers and "data_ciphers_fallback" not in glob:
        ctx.warn_setting(
            cipher,
            f"cipher {cipher.value} is not in data-ciphers and is not used for negotiation "
            f"(as in OpenVPN 2.6); add it to data-ciphers or use data-ciphers-fallback",
        )
    if not any(
        k in glob for k in ("remote_cert_tls_server", "remote_cert_eku", "verify_x509_name")
    ) and ("peer_fingerprints" not in glob):
        ctx.warnings.append(
            ConfigWarning(
                "remote-cert-tls",
                0,
                "no check that the peer is a server (remote-cert-tls server or "
                "verify-x509-name): another client of the same CA could pose as the server",
            )
        )


def _at(glob: dict[str, list[Setting]], key: str) -> Setting | None:
    items = glob.get(key)
    return items[-1] if items else None


def _fail(glob: dict[str, list[Setting]], key: str | None, message: str) -> ConfigError:
    """An error at `key`'s line; for something missing, at the line that makes this a client."""
    s = _at(glob, key) if key else None
    s = s or _at(glob, "tls_client") or _at(glob, "pull")
    if s is None:
        return ConfigError(message)
    return ConfigError(message, line=s.line, column=s.column, directive=s.directive)


def _validate_static_key(c: Config, glob: dict[str, list[Setting]]) -> None:
    """Static-key mode (statickey.py): a CBC cipher named, a point-to-point ifconfig."""
    if "pull" in glob:
        raise _fail(glob, "pull", "static-key mode (secret) has no server to pull from")
    if not c.remotes:
        raise _fail(
            glob, "secret", "static-key mode: no peer: add a 'remote HOST [PORT] [PROTO]' line"
        )
    if "dev" not in glob:
        raise _fail(glob, "secret", "static-key mode: no tunnel device: add 'dev tun'")
    if c.cipher is None or not c.cipher.upper().endswith("-CBC"):
        raise _fail(
            glob,
            "cipher" if c.cipher else "secret",
            "static-key mode needs a CBC cipher named on both ends (OpenVPN's default there "
            "is BF-CBC, not supported): add e.g. 'cipher AES-256-CBC'",
        )
    if c.ifconfig is None:
        raise _fail(
            glob, "secret", "static-key mode is point-to-point: add 'ifconfig LOCAL REMOTE'"
        )


def validate(c: Config, glob: dict[str, list[Setting]]) -> None:
    """What makes a config usable by this client; each error names the line to change."""
    if c.secret is not None:
        tls = [k for k in ("tls_client", "ca", "cert", "tls_auth", "tls_crypt") if k in glob]
        if tls:
            raise conflict(
                glob["secret"][-1],
                glob[tls[0]][-1],
                "static-key mode (secret) excludes TLS options",
            )
        _validate_static_key(c, glob)
        return
    if not c.tls_client:
        raise _fail(glob, "pull", "not a client config: add 'client' (or 'tls-client' and 'pull')")
    if not c.remotes:
        raise _fail(glob, None, "no server: add a 'remote HOST [PORT] [PROTO]' line")
    if "dev" not in glob:
        raise _fail(glob, None, "no tunnel device: add 'dev tun' (OpenVPN requires it too)")
    if c.pkcs12 is not None:
        for other in ("cert", "key"):
            if other in glob:
                raise conflict(glob[other][-1], glob["pkcs12"][-1], "pkcs12 excludes cert and key")
    if c.cert is not None and c.key is None:
        raise _fail(glob, "cert", "a client certificate needs its private key: add 'key'")
    if c.key is not None and c.cert is None:
        raise _fail(glob, "key", "a private key needs its certificate: add 'cert'")
    key_locked = c.key is not None and unlock.key_is_encrypted(c.key.value)
    if c.cert is not None and c.key is not None and (c.key_passphrase or not key_locked):
        try:
            matches = unlock.cert_matches_key(c.cert, c.key, c.key_passphrase)
        except keys.KeyMaterialError as exc:
            raise _fail(glob, "cert", str(exc)) from None
        if not matches:
            raise _fail(glob, "key", "the private key does not belong to the client certificate")
    # a locked bundle's CA certificates are known once it is unlocked (unlock.with_passphrase)
    bundle = c.pkcs12
    unlocked_later = (
        bundle is not None and c.key_passphrase is None and unlock.pkcs12_is_locked(bundle.value)
    )
    if c.ca is None and not c.peer_fingerprints and not unlocked_later:
        why = " (the PKCS#12 bundle carries no CA certificate)" if c.pkcs12 else ""
        raise _fail(
            glob,
            None,
            f"no way to check the server{why}: add 'ca' (the CA certificate) or 'peer-fingerprint'",
        )
    if c.cert is None and c.pkcs12 is None and c.auth_user_pass is None:
        raise _fail(
            glob,
            None,
            "no client authentication: add 'cert' and 'key', 'pkcs12', or 'auth-user-pass'",
        )
    dev_type = _at(glob, "dev_type")
    if c.dev != "null" and not c.dev.startswith("tun") and dev_type is None:
        raise _fail(glob, "dev", f"cannot tell the type of device '{c.dev}': add 'dev-type tun'")
    if not c.pull and c.ifconfig is None:
        raise _fail(
            glob, "tls_client", "without 'pull' the tunnel address must be given: add 'ifconfig'"
        )
    if c.ping_restart is not None and c.ping_exit is not None:
        raise conflict(
            glob["ping_exit"][-1],
            glob["ping_restart"][-1],
            "ping-restart and ping-exit exclude each other",
        )
    if c.tls_version_max is not None and c.tls_version_min is not None:
        order = list(type(c.tls_version_min))
        too_low = order.index(c.tls_version_max) < order.index(c.tls_version_min)
        if too_low and not c.tls_version_min_or_highest:
            raise conflict(
                glob["tls_version_max"][-1],
                glob["tls_version_min"][-1],
                "tls-version-max is below tls-version-min",
            )
