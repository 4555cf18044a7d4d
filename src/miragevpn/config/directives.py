"""The directive table: every option name this parser knows → its outcome, arity and handler.

Four outcomes (docs/config-policy.md lists them all):
- USED: the handler records settings that reach the model;
- DEPRECATED: OpenVPN 2.6 accepts it with a warning; so do we (the handler maps it to its
  modern meaning, or it is recorded as ignored when it has none);
- IGNORED: accepted without effect here, recorded in `Config.ignored` with its line;
- REJECTED: a `ConfigError` with the reason.
A name not in the table is unknown: an error, unless `ignore-unknown-option` or `setenv opt`
cover it (as in OpenVPN).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import credentials as c
from . import handlers as h
from . import pkihandlers as pk
from . import proxies as px
from .context import Handler, Outcome

MANY = 255  # OpenVPN's MAX_PARMS is 16; we do not limit ignored options further


@dataclass(frozen=True, slots=True)
class Spec:
    outcome: Outcome
    min_args: int = 0
    max_args: int = 0
    handler: Handler | None = None
    reason: str = ""
    inline: bool = False  # may be given as a <name> block
    in_connection: bool = False  # allowed inside a <connection> block


def used(
    handler: Handler, lo: int = 0, hi: int = 0, *, inline: bool = False, conn: bool = False
) -> Spec:
    return Spec(Outcome.USED, lo, hi, handler, inline=inline, in_connection=conn)


def ignored(reason: str, lo: int = 0, hi: int = MANY, *, conn: bool = False) -> Spec:
    return Spec(Outcome.IGNORED, lo, hi, reason=reason, in_connection=conn)


def deprecated(
    reason: str,
    lo: int = 0,
    hi: int = MANY,
    handler: Handler | None = None,
    *,
    conn: bool = False,
) -> Spec:
    return Spec(Outcome.DEPRECATED, lo, hi, handler, reason=reason, in_connection=conn)


def rejected(reason: str, *, inline: bool = False, conn: bool = False) -> Spec:
    return Spec(Outcome.REJECTED, 0, MANY, reason=reason, inline=inline, in_connection=conn)


LOGGING = "logging and diagnostics go to our own log"
SCRIPT = "scripts and hooks are never run by this client"
PRIVILEGE = "the runtime manages its own privileges and sandboxing"
PLATFORM = "a setting for another platform or OpenVPN's own process; no effect here"
MANAGEMENT = "the OpenVPN management interface does not exist here"
SERVER = "a server-side option; this is a client config"
FILE = "a config file used directly must not pull in other configs"
COMMAND = "a command-line action of the openvpn program, not a setting of a connection"
PKCS11 = "PKCS#11 tokens are not supported"

_TIMERS = {
    "ping": h.h_seconds("ping", zero_is_none=True),
    "ping-restart": h.h_seconds("ping_restart", zero_is_none=True),
    "ping-exit": h.h_seconds("ping_exit", zero_is_none=True),
    "hand-window": h.h_seconds("hand_window", lo=1),
    "tran-window": h.h_seconds("tran_window", lo=1),
    "tls-timeout": h.h_seconds("tls_timeout", lo=1),
    "connect-timeout": h.h_seconds("connect_timeout", lo=1),
    "server-poll-timeout": h.h_seconds("server_poll_timeout", lo=1),
    "reneg-bytes": h.h_int("reneg_bytes", hi=2**63 - 1, zero_is_none=True),
    "reneg-pkts": h.h_int("reneg_pkts", hi=2**63 - 1, zero_is_none=True),
    "connect-retry-max": h.h_int("connect_retry_max", zero_is_none=True),
}

# options.c accepts these inside <connection> (VERIFY_PERMISSION with OPT_P_CONNECTION)
_CONN_TIMERS = frozenset({"connect-timeout", "server-poll-timeout", "connect-retry-max"})

TABLE: dict[str, Spec] = {
    # role
    "client": used(h.h_client),
    "pull": used(h.flag("pull")),
    "tls-client": used(h.flag("tls_client")),
    # remotes and sockets
    "remote": used(h.h_remote, 1, 3, conn=True),
    "proto": used(h.h_proto, 1, 1, conn=True),
    "port": used(h.h_port("port"), 1, 1, conn=True),
    "rport": used(h.h_port("rport"), 1, 1, conn=True),
    "lport": used(h.h_port("lport", lo=0), 1, 1, conn=True),
    "local": used(h.h_local, 1, 1, conn=True),
    "nobind": used(h.flag("nobind"), conn=True),
    "bind": used(h.h_bind, 0, 1, conn=True),
    "float": used(h.flag("float_"), conn=True),
    "remote-random": used(h.flag("remote_random")),
    "remote-random-hostname": used(h.flag("remote_random_hostname")),
    "connect-retry": used(h.h_connect_retry, 1, 2, conn=True),
    "resolv-retry": used(h.h_resolv_retry, 1, 1),
    "explicit-exit-notify": used(h.h_explicit_exit_notify, 0, 1, conn=True),
    # proxies (proxies.py): TCP only
    "http-proxy": used(px.h_http_proxy, 1, 4, conn=True),
    "http-proxy-option": used(px.h_http_proxy_option, 1, 3, conn=True),
    "http-proxy-user-pass": used(px.h_http_proxy_user_pass, 0, 1, inline=True),
    "socks-proxy": used(px.h_socks_proxy, 1, 3, inline=True, conn=True),
    # device and addresses
    "dev": used(h.h_dev, 1, 1),
    "dev-type": used(h.h_dev_type, 1, 1),
    "topology": used(h.h_topology, 1, 1),
    "ifconfig": used(h.h_ifconfig, 2, 2),
    "ifconfig-ipv6": used(h.h_ifconfig_ipv6, 1, 2),
    "tun-mtu": used(h.h_int("tun_mtu", lo=68, hi=65535), 1, 2, conn=True),
    "link-mtu": used(h.h_int("link_mtu", lo=68, hi=65535), 1, 1, conn=True),
    "udp-mtu": used(h.h_int("link_mtu", lo=68, hi=65535), 1, 1, conn=True),  # = link-mtu
    "mssfix": used(h.h_mssfix, 0, 2, conn=True),
    # PKI
    "ca": used(pk.h_certificates("ca", "the CA certificate"), 0, 1, inline=True),
    "cert": used(pk.h_certificates("cert", "the client certificate"), 0, 1, inline=True),
    "extra-certs": used(
        pk.h_certificates("extra_certs", "the extra certificates"), 0, 1, inline=True
    ),
    "key": used(pk.h_key, 0, 1, inline=True),
    "pkcs12": used(pk.h_pkcs12, 0, 1, inline=True),
    "askpass": used(pk.h_askpass, 0, 1),  # OPT_P_GENERAL: not inline, not in <connection>
    "peer-fingerprint": used(pk.h_peer_fingerprint, 0, 1, inline=True),
    "remote-cert-tls": used(h.h_remote_cert_tls, 1, 1),
    "remote-cert-ku": used(h.h_remote_cert_ku, 0, MANY),
    "remote-cert-eku": used(h.h_remote_cert_eku, 1, 1),
    "ns-cert-type": deprecated("use remote-cert-tls server", 1, 1, h.h_ns_cert_type),
    "verify-x509-name": used(h.h_verify_x509_name, 1, 2),
    "tls-version-min": used(h.h_tls_version_min, 1, 2),
    "tls-version-max": used(h.h_tls_version_max, 1, 1),
    "tls-cipher": used(h.h_string("tls_cipher"), 1, 1),
    "tls-ciphersuites": used(h.h_string("tls_ciphersuites"), 1, 1),
    # control-channel protection and static keys
    "tls-auth": used(h.h_tls_auth, 0, 2, inline=True, conn=True),
    "tls-crypt": used(h.h_tls_crypt, 0, 1, inline=True, conn=True),
    "tls-crypt-v2": used(h.h_tls_crypt_v2, 0, 2, inline=True, conn=True),
    "key-direction": used(h.h_key_direction, 1, 1, conn=True),
    "secret": used(h.h_secret, 0, 2, inline=True),
    # data channel
    "cipher": used(h.h_cipher, 1, 1),
    "data-ciphers": used(h.h_data_ciphers, 1, 1),
    "ncp-ciphers": deprecated("use data-ciphers", 1, 1, h.h_data_ciphers),
    "data-ciphers-fallback": used(h.h_data_ciphers_fallback, 1, 1),
    "auth": used(h.h_auth, 1, 1),
    "comp-lzo": used(h.h_comp_lzo, 0, 1),
    "compress": used(h.h_compress, 0, 1),
    "allow-compression": used(h.h_allow_compression, 1, 1),
    "replay-window": used(h.h_replay_window, 1, 2),
    "mute-replay-warnings": used(h.flag("mute_replay_warnings")),
    # user/password
    "auth-user-pass": used(c.h_auth_user_pass, 0, 1, inline=True),
    "auth-nocache": used(h.flag("auth_nocache")),
    "auth-retry": used(c.h_auth_retry, 1, 1),
    "static-challenge": used(c.h_static_challenge, 2, 3),
    # timers
    **{name: used(handler, 1, 1, conn=name in _CONN_TIMERS) for name, handler in _TIMERS.items()},
    "keepalive": used(h.h_keepalive, 2, 2),
    "reneg-sec": used(h.h_reneg_sec, 1, 2),
    # routes and pulled settings
    "route": used(h.h_route, 1, 4),
    "route-ipv6": used(h.h_route_ipv6, 1, 3),
    "route-gateway": used(h.h_route_gateway, 1, 1),
    "route-metric": used(h.h_int("route_metric", hi=0xFFFF), 1, 1),
    "route-delay": used(h.h_route_delay, 0, 2),
    "redirect-gateway": used(h.h_redirect_gateway, 0, len(h.REDIRECT_FLAGS)),
    "route-nopull": used(h.flag("route_nopull")),
    "block-ipv6": used(h.flag("block_ipv6")),
    "pull-filter": used(h.h_pull_filter, 2, 2),
    "dhcp-option": used(h.h_dhcp_option, 1, 2),
    "persist-key": used(h.flag("persist_key")),
    "persist-tun": used(h.flag("persist_tun")),
    # deprecated in OpenVPN 2.6 without a meaning here
    "tun-ipv6": deprecated("no effect since OpenVPN 2.4; IPv6 follows ifconfig-ipv6", 0, 0),
    "http-proxy-retry": deprecated("no effect since OpenVPN 2.4", 0, 0, conn=True),
    "socks-proxy-retry": deprecated("no effect since OpenVPN 2.4", 0, 0, conn=True),
    "http-proxy-timeout": deprecated("no effect since OpenVPN 2.4", 1, 1, conn=True),
    "prng": deprecated("ignored by OpenVPN 2.6 (the TLS library's generator is used)", 1, 2),
    "max-routes": deprecated("no effect since OpenVPN 2.4", 1, 1),
    "disable-occ": deprecated("no effect here", 0, 0),
    "opt-verify": deprecated("no effect here", 0, 0),
    # accepted without effect here
    "verb": ignored(LOGGING, 1, 1),
    "mute": ignored(LOGGING, 1, 1),
    "log": ignored(LOGGING, 1, 1),
    "log-append": ignored(LOGGING, 1, 1),
    "syslog": ignored(LOGGING, 0, 1),
    "status": ignored(LOGGING, 1, 2),
    "status-version": ignored(LOGGING, 0, 1),
    "suppress-timestamps": ignored(LOGGING, 0, 0),
    "machine-readable-output": ignored(LOGGING, 0, 0),
    "errors-to-stderr": ignored(LOGGING, 0, 0),
    "echo": ignored(LOGGING),
    "user": ignored(PRIVILEGE, 1, 1),
    "group": ignored(PRIVILEGE, 1, 1),
    "chroot": ignored(PRIVILEGE, 1, 1),
    "setcon": ignored(PRIVILEGE, 1, 1),
    "mlock": ignored(PRIVILEGE, 0, 0),
    "nice": ignored(PLATFORM, 1, 1),
    "daemon": ignored(PLATFORM, 0, 1),
    "writepid": ignored(PLATFORM, 1, 1),
    "cd": ignored(PLATFORM, 1, 1),
    "script-security": ignored(SCRIPT, 1, 2),
    "up": ignored(SCRIPT, 1, MANY),
    "down": ignored(SCRIPT, 1, MANY),
    "down-pre": ignored(SCRIPT, 0, 0),
    "up-delay": ignored(SCRIPT, 0, 0),
    "up-restart": ignored(SCRIPT, 0, 0),
    "route-up": ignored(SCRIPT, 1, MANY),
    "route-pre-down": ignored(SCRIPT, 1, MANY),
    "ipchange": ignored(SCRIPT, 1, MANY),
    "setenv": ignored("environment for scripts, which are never run", 1, 2),
    "setenv-safe": ignored("environment for scripts, which are never run", 1, 2),
    "sndbuf": ignored(PLATFORM, 1, 1),
    "rcvbuf": ignored(PLATFORM, 1, 1),
    "socket-flags": ignored(PLATFORM, 1, MANY),
    "fast-io": ignored(PLATFORM, 0, 0),
    "txqueuelen": ignored(PLATFORM, 1, 1),
    "mark": ignored(PLATFORM, 1, 1),
    "mtu-disc": ignored(PLATFORM, 1, 1, conn=True),
    "tun-mtu-extra": ignored(PLATFORM, 0, 1, conn=True),
    "tun-mtu-max": ignored(
        "a pushed tun-mtu is read with the bounds of a configured one (68 to 65535)",
        1,
        1,
        conn=True,
    ),
    "tcp-nodelay": ignored(PLATFORM, 0, 0),
    "passtos": ignored(PLATFORM, 0, 0),
    "multihome": ignored(PLATFORM, 0, 1),
    "allow-recursive-routing": ignored(PLATFORM, 0, 0),
    "ip-remote-hint": ignored(PLATFORM, 0, 1),
    "msg-channel": ignored(PLATFORM, 1, 1),
    "iproute": ignored("the runtime installs routes itself", 1, 1),
    "preresolve": ignored("remotes are resolved when they are tried", 0, 1),
    "use-prediction-resistance": ignored("random numbers come from the kernel", 0, 0),
    "memstats": ignored(LOGGING, 1, 1),
    "tmp-dir": ignored(SCRIPT, 1, 1),
    "x509-track": ignored(SCRIPT, 1, 1),
    "tls-export-cert": ignored(SCRIPT, 1, 1),
    "inactive": ignored("no inactivity exit; the tunnel stays up until stopped", 1, 2),
    "ping-timer-rem": ignored("timers here are always active", 0, 0),
    "persist-remote-ip": ignored(PLATFORM, 0, 0),
    "persist-local-ip": ignored(PLATFORM, 0, 0),
    "remap-usr1": ignored(PLATFORM, 1, 1),
    "disable-dco": ignored("there is no data-channel offload here", 0, 0),
    "dh": ignored("Diffie-Hellman parameters are a server setting; OpenVPN ignores it too", 1, 1),
    "ecdh-curve": ignored("TLS groups follow the TLS library's defaults", 1, 1),
    "tls-groups": ignored("TLS groups follow the TLS library's defaults", 1, 1),
    "tls-cert-profile": ignored("certificate checks follow the TLS library's defaults", 1, 1),
    "tls-exit": ignored(PLATFORM, 0, 0),
    "push-peer-info": ignored("the peer info sent is fixed", 0, 0),
    "auth-token-user": rejected("auth tokens are pushed by the server, not configured"),
    "allow-pull-fqdn": ignored("pushed host names are not resolved", 0, 0),
    "route-noexec": ignored("the runtime installs routes itself", 0, 0),
    "ifconfig-noexec": ignored("the runtime configures the device itself", 0, 0),
    "ifconfig-nowarn": ignored(LOGGING, 0, 0),
    "comp-noadapt": ignored("compression is never applied", 0, 0),
    "block-outside-dns": ignored(PLATFORM, 0, 0),
    "ip-win32": ignored(PLATFORM, 1, 2),
    "route-method": ignored(PLATFORM, 1, 1),
    "register-dns": ignored(PLATFORM, 0, 0),
    "dhcp-renew": ignored(PLATFORM, 0, 0),
    "dhcp-release": ignored(PLATFORM, 0, 0),
    "dhcp-pre-release": ignored(PLATFORM, 0, 0),
    "tap-sleep": ignored(PLATFORM, 1, 1),
    "win-sys": ignored(PLATFORM, 1, 1),
    "windows-driver": ignored(PLATFORM, 1, 1),
    "allow-nonadmin": ignored(PLATFORM, 0, 1),
    "service": ignored(PLATFORM, 1, 2),
    "pause-exit": ignored(PLATFORM, 0, 0),
    "management": ignored(MANAGEMENT, 1, 3),
    "management-hold": ignored(MANAGEMENT, 0, 0),
    "management-query-passwords": ignored(MANAGEMENT, 0, 0),
    "management-signal": ignored(MANAGEMENT, 0, 0),
    "management-forget-disconnect": ignored(MANAGEMENT, 0, 0),
    "management-up-down": ignored(MANAGEMENT, 0, 0),
    "management-log-cache": ignored(MANAGEMENT, 1, 1),
    "management-client": ignored(MANAGEMENT, 0, 0),
    "management-query-remote": ignored(MANAGEMENT, 0, 0),
    "management-query-proxy": ignored(MANAGEMENT, 0, 0),
    "management-client-user": ignored(MANAGEMENT, 1, 1),
    "management-client-group": ignored(MANAGEMENT, 1, 1),
    "replay-persist": ignored("replay state is kept in memory only", 1, 1),
    "engine": ignored("crypto engines are not used", 0, 1),
    "providers": ignored("crypto providers are not used", 1, MANY),
    # rejected, with the reason
    "dev-node": rejected("device nodes are chosen by the runtime"),
    "fragment": rejected(
        "OpenVPN's internal fragmentation is not supported; use mssfix/tun-mtu", conn=True
    ),
    "mtu-dynamic": rejected(
        "replaced by fragment (OpenVPN 2.6 refuses it), which is not supported", conn=True
    ),
    "max-packet-size": rejected(
        "the control channel's packet size is fixed here; use tun-mtu/mssfix", conn=True
    ),
    "keying-material-exporter": rejected(
        "it exports TLS keying material to scripts and plugins, which this client never runs"
    ),
    "bind-dev": rejected("binding the sockets to a device (VRF) is not implemented"),
    "client-nat": rejected("address translation inside the tunnel is not implemented"),
    "lladdr": rejected("TAP devices (and their MAC addresses) are not supported; use dev tun"),
    "route-ipv6-gateway": rejected("not implemented; give the gateway in each route-ipv6"),
    "session-timeout": rejected("a time limit on the session is not implemented"),
    "shaper": rejected("traffic shaping is not implemented"),
    "http-proxy-override": rejected(MANAGEMENT),
    "gremlin": rejected("a testing option that damages traffic on purpose"),
    "compat-names": rejected("removed in OpenVPN 2.5"),
    "plugin": rejected("plugins are never loaded by this client"),
    "tls-verify": rejected(
        "a verification script would never run; use verify-x509-name or peer-fingerprint"
    ),
    "auth-user-pass-verify": rejected(SERVER),
    "crl-verify": rejected(
        "certificate revocation lists are not checked by this client; refusing rather than "
        "silently skipping a security check",
        inline=True,
    ),
    "capath": rejected("give the CA certificates with ca"),
    "verify-hash": rejected("deprecated in OpenVPN 2.6; use peer-fingerprint or ca"),
    "cryptoapicert": rejected("the Windows certificate store is not available"),
    "pkcs11-providers": rejected(PKCS11),
    "pkcs11-id": rejected(PKCS11),
    "pkcs11-id-management": rejected(PKCS11),
    "pkcs11-cert-private": rejected(PKCS11),
    "pkcs11-pin-cache": rejected(PKCS11),
    "pkcs11-private-mode": rejected(PKCS11),
    "pkcs11-protected-authentication": rejected(PKCS11),
    "management-external-key": rejected("external keys (management interface) are not supported"),
    "management-external-cert": rejected("external keys (management interface) are not supported"),
    "proto-force": rejected("not supported; keep only the remotes with the protocol you want"),
    "redirect-private": rejected("not supported; use route or redirect-gateway"),
    "dns": rejected("the --dns option is not supported yet; use dhcp-option DNS"),
    "no-replay": rejected("replay protection cannot be disabled"),
    "tls-server": rejected(SERVER),
    "server": rejected(SERVER),
    "server-ipv6": rejected(SERVER),
    "server-bridge": rejected(SERVER),
    "mode": rejected("'mode server' is a server; a client uses 'client'"),
    "push": rejected(SERVER),
    "ifconfig-pool": rejected(SERVER),
    "ifconfig-pool-persist": rejected(SERVER),
    "client-to-client": rejected(SERVER),
    "duplicate-cn": rejected(SERVER),
    "client-config-dir": rejected(SERVER),
    "max-clients": rejected(SERVER),
    "verify-client-cert": rejected(SERVER),
    "tls-crypt-v2-verify": rejected(SERVER),
    "peer-id": rejected("peer-id is pushed by the server, not configured"),
    "key-derivation": rejected("key-derivation is pushed by the server, not configured"),
    "protocol-flags": rejected("protocol-flags is pushed by the server, not configured"),
    "auth-token": rejected("auth-token is pushed by the server, not configured"),
    "config": rejected(FILE),
    "compat-mode": rejected("compatibility with old OpenVPN behaviour is not offered"),
    "providers-legacy": rejected("legacy crypto is not offered"),
    # gone from OpenVPN (2.6 reports them as unrecognized options or errors); versions checked
    # against OpenVPN's options.c at v2.3.0, v2.4.0, v2.5.0, v2.6.0 and v2.6.14
    "tls-remote": rejected("deprecated in OpenVPN 2.3 and removed in 2.4; use verify-x509-name"),
    "key-method": rejected("removed in OpenVPN 2.5 (key-method 2 is the only one)"),
    "ncp-disable": rejected("removed in OpenVPN 2.6; use data-ciphers"),
    "keysize": rejected("removed in OpenVPN 2.6"),
    "no-iv": rejected("removed in OpenVPN 2.5"),
    "no-name-remapping": rejected("removed in OpenVPN 2.5"),
    "client-cert-not-required": rejected("removed in OpenVPN 2.5 (and a server option)"),
    "max-routes-per-client": rejected(SERVER),
    **{
        name: rejected(SERVER)
        for name in (
            "auth-gen-token",
            "auth-gen-token-secret",
            "auth-user-pass-optional",
            "bcast-buffers",
            "ccd-exclusive",
            "client-connect",
            "client-crresponse",
            "client-disconnect",
            "connect-freq",
            "connect-freq-initial",
            "disable",
            "force-tls-key-material-export",
            "hash-size",
            "ifconfig-ipv6-pool",
            "ifconfig-ipv6-push",
            "ifconfig-push",
            "ifconfig-push-constraint",
            "iroute",
            "iroute-ipv6",
            "learn-address",
            "management-client-auth",
            "port-share",
            "push-remove",
            "push-reset",
            "single-session",
            "stale-routes-check",
            "tcp-queue-limit",
            "username-as-common-name",
            "vlan-accept",
            "vlan-pvid",
            "vlan-tagging",
            "x509-username-field",
        )
    },
    "push-continuation": rejected("push-continuation is sent by the server, not configured"),
    **{
        name: rejected(COMMAND)
        for name in (
            "dhcp-internal",
            "genkey",
            "help",
            "mktun",
            "mtu-test",
            "rdns-internal",
            "rmtun",
            "show-adapters",
            "show-ciphers",
            "show-curves",
            "show-digests",
            "show-engines",
            "show-gateway",
            "show-groups",
            "show-net",
            "show-net-up",
            "show-pkcs11-ids",
            "show-tls",
            "show-valid-subnets",
            "test-crypto",
            "version",
        )
    },
}
