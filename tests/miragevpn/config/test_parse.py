"""Directive handling, conflict rules and key validation, one rule per test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from miragevpn.config import parse_config
from miragevpn.config.check import summary
from miragevpn.config.directives import TABLE
from miragevpn.config.model import (
    AddressFamily,
    AllowCompression,
    Compression,
    KeyDirection,
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
    Transport,
)
from miragevpn.config.parse import file_references
from miragevpn.errors import ConfigError
from tests.helpers.pki import Pki

Reader = Callable[[str], bytes]
BASE = "client\ndev tun\nremote vpn.example.org\nca ca.crt\ncert client.crt\nkey client.key\n"


def parse(text: str, read_file: Reader):  # type: ignore[no-untyped-def]
    return parse_config(text, read_file=read_file)


def fails(text: str, read_file: Reader, fragment: str, line: int | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, read_file=read_file)
    assert fragment in info.value.message, info.value.message
    if line is not None:
        assert info.value.line == line
    return info.value


def test_minimal(read_file: Reader) -> None:
    c = parse(BASE, read_file)
    assert c.client and c.pull and c.tls_client
    assert c.remotes[0].port == 1194 and c.remotes[0].proto.transport is Transport.UDP


def test_port_proto_defaults(read_file: Reader) -> None:
    c = parse(BASE + "proto tcp6\nport 443\nremote b 53 udp4\n", read_file)
    a, b = c.remotes
    assert (a.port, a.proto.transport, a.proto.family) == (443, Transport.TCP, AddressFamily.IPV6)
    assert (b.port, b.proto.family) == (53, AddressFamily.IPV4)
    assert c.lport == 443


@pytest.mark.parametrize(
    ("proto", "transport", "family"),
    [
        ("udp", Transport.UDP, AddressFamily.ANY),
        ("udp4", Transport.UDP, AddressFamily.IPV4),
        ("udp6", Transport.UDP, AddressFamily.IPV6),
        ("tcp", Transport.TCP, AddressFamily.ANY),
        ("tcp4", Transport.TCP, AddressFamily.IPV4),
        ("tcp6", Transport.TCP, AddressFamily.IPV6),
        ("tcp-client", Transport.TCP, AddressFamily.ANY),
        ("tcp4-client", Transport.TCP, AddressFamily.IPV4),
        ("tcp6-client", Transport.TCP, AddressFamily.IPV6),
    ],
)
def test_every_client_proto_spelling(
    read_file: Reader, proto: str, transport: Transport, family: AddressFamily
) -> None:
    address = "192.0.2.1" if family is AddressFamily.IPV4 else "2001:db8::1"
    c = parse(BASE + f"remote {address} 443 {proto}\n", read_file)
    remote = c.remotes[-1]
    assert (remote.host, remote.port) == (address, 443)
    assert (remote.proto.transport, remote.proto.family) == (transport, family)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("remote 2001:db8::1 1194 udp4", "2001:db8::1 is an IPv6 address but the protocol is udp4"),
        (
            "remote 192.0.2.1 443 tcp6-client",
            "192.0.2.1 is an IPv4 address but the protocol is tcp6",
        ),
    ],
)
def test_a_literal_of_the_other_family_is_refused_at_its_line(
    read_file: Reader, line: str, fragment: str
) -> None:
    fails(BASE + line + "\n", read_file, fragment, 7)


def test_block_ipv6_is_a_flag(read_file: Reader) -> None:
    assert parse(BASE + "block-ipv6\n", read_file).block_ipv6
    assert not parse(BASE, read_file).block_ipv6
    fails(BASE + "block-ipv6 yes\n", read_file, "expects 0 arguments", 7)


def test_connection_blocks(read_file: Reader) -> None:
    text = BASE.replace("remote vpn.example.org\n", "") + (
        "proto tcp\n<connection>\nremote a 1\n</connection>\n<connection>\nremote b\nproto udp\n"
        "</connection>\n"
    )
    a, b = parse(text, read_file).remotes
    assert (a.host, a.port, a.proto.transport) == ("a", 1, Transport.TCP)
    assert (b.host, b.port, b.proto.transport) == ("b", 1194, Transport.UDP)


def test_remote_mixed_with_connection(read_file: Reader) -> None:
    fails(BASE + "<connection>\nremote x\n</connection>\n", read_file, "<connection>", 8)


def test_inline_marker_and_key_direction_anywhere(read_file: Reader, files: dict) -> None:  # type: ignore[type-arg]
    ta = files["ta.key"].decode()
    c = parse(f"key-direction 1\n{BASE}tls-auth [inline]\n<tls-auth>\n{ta}</tls-auth>\n", read_file)
    assert isinstance(c.tls_protection, TlsAuth)
    assert c.tls_protection.direction is KeyDirection.INVERSE
    fails(BASE + "tls-auth [inline] 1\n", read_file, "no <tls-auth> block", 7)


def test_openssl_text_before_pem(read_file: Reader, files: dict) -> None:  # type: ignore[type-arg]
    cert = files["client.crt"].decode()
    text = BASE.replace("cert client.crt\n", "") + (
        "<cert>\nCertificate:\n    Data:\n        Version: 3 (0x2)\n" + cert + "</cert>\n"
    )
    assert parse(text, read_file).cert == cert


def test_protections(read_file: Reader) -> None:
    assert isinstance(parse(BASE + "tls-crypt ta.key\n", read_file).tls_protection, TlsCrypt)
    assert isinstance(
        parse(BASE + "tls-crypt-v2 v2cli.key\n", read_file).tls_protection, TlsCryptV2
    )
    fails(BASE + "tls-auth ta.key 1\ntls-crypt ta.key\n", read_file, "mutually exclusive", 8)
    fails(BASE + "tls-crypt-v2 v2srv.key\n", read_file, "server* key", 7)


@pytest.mark.parametrize(
    ("extra", "fragment", "line"),
    [
        ("dev tap\n", "tap", 7),
        ("fragment 1300\n", "fragmentation", 7),
        ("plugin x.so\n", "plugins", 7),
        ("tls-remote server\n", "verify-x509-name", 7),
        ("key-method 2\n", "removed", 7),
        ("cipher BF-CBC\n", "BF-CBC", 7),
        ("data-ciphers AES-256-GCM:BF-CBC\n", "BF-CBC", 7),
        ("frobnicate\n", "unknown option", 7),
        ("ca ca.crt\nca server.crt\n", "twice", 8),
        ("verify-x509-name a name\nverify-x509-name b name\n", "twice", 8),
        ("ping-restart 10\nping-exit 20\n", "exclude", 8),
        ("verb\n", "expects 1 argument", 7),
        ("ca missing.crt\n", "No such file", 7),
        ("keepalive 10 15\n", "twice", 7),
        ("comp-lzo yes\nallow-compression no\n", "conflicts", 7),
        ("secret ta.key\n", "excludes TLS", 7),
        ("pkcs12 x.p12\n", "cannot read", 7),
    ],
)
def test_rejections(read_file: Reader, extra: str, fragment: str, line: int) -> None:
    fails(BASE + extra, read_file, fragment, line)


def test_cert_without_key_and_key_without_one(read_file: Reader) -> None:
    fails(BASE.replace("key client.key\n", ""), read_file, "needs its private key", 5)
    fails(BASE.replace("client.key", "ca.crt"), read_file, "no PEM private key", 6)


def test_missing_pieces(read_file: Reader) -> None:
    fails("client\ndev tun\nca ca.crt\nauth-user-pass\n", read_file, "no server", 1)
    fails("dev tun\nremote a\nca ca.crt\nauth-user-pass\n", read_file, "not a client")
    fails("client\ndev tun\nremote a\nauth-user-pass\n", read_file, "check the server", 1)
    fails("client\ndev tun\nremote a\nca ca.crt\n", read_file, "authentication", 1)


def test_last_wins_with_warning(read_file: Reader) -> None:
    c = parse(BASE + "verb 3\nping 10\nping 20\n", read_file)
    assert c.ping == 20
    assert any(w.line == 9 and "overrides line 8" in w.message for w in c.warnings)
    assert parse(BASE + "nobind\nnobind\n", read_file).nobind


def test_outcomes_recorded(read_file: Reader) -> None:
    text = BASE + "verb 3\nup /bin/x\nns-cert-type server\ntun-ipv6\nsetenv opt foo 1\n"
    text += "ignore-unknown-option bar\nbar 2\nsetenv opt fragment 1300\n"
    c = parse(text, read_file)
    assert c.remote_cert_tls_server
    ignored = {(i.name, i.line) for i in c.ignored}
    assert {("verb", 7), ("up", 8), ("tun-ipv6", 10), ("foo", 11), ("bar", 13)} <= ignored
    assert ("fragment", 14) in ignored
    assert {w.directive for w in c.warnings} >= {"ns-cert-type", "tun-ipv6", "foo", "bar"}


def test_compression_defaults_to_asym(read_file: Reader) -> None:
    c = parse(BASE + "comp-lzo\n", read_file)
    assert (c.compression, c.allow_compression) == (Compression.LZO, AllowCompression.ASYM)
    assert parse(BASE + "comp-lzo no\n", read_file).allow_compression is AllowCompression.NO


def test_auth_user_pass_file_and_inline(read_file: Reader, files: dict) -> None:  # type: ignore[type-arg]
    files["up.txt"] = b"alice\r\nhunter2pw\r\n"
    c = parse("client\ndev tun\nremote a\nca ca.crt\nauth-user-pass up.txt\n", read_file)
    assert c.auth_user_pass is not None and c.auth_user_pass.username == "alice"
    assert c.auth_user_pass.password is not None and c.auth_user_pass.password.value == b"hunter2pw"
    assert "hunter2pw" not in repr(c)


def test_crlf_and_bytes(read_file: Reader) -> None:
    assert parse(BASE.replace("\n", "\r\n").encode(), read_file).remotes


def test_nul_and_bad_utf8(read_file: Reader) -> None:
    fails(BASE.encode() + b"verb\x003\n", read_file, "NUL", 7)
    fails(BASE.encode() + b"\xc3\x28\n", read_file, "UTF-8", 7)


# --------------------------------------------------------------------------- issue 11, item 8

NO_REMOTE = BASE.replace("remote vpn.example.org\n", "")


def test_every_connection_option_of_openvpn_is_accepted_in_a_block(
    read_file: Reader, files: dict[str, bytes]
) -> None:
    # options.c: the options whose VERIFY_PERMISSION includes OPT_P_CONNECTION (2.6.14)
    body = (
        "remote a 1194 udp\nconnect-retry 2 30\nconnect-retry-max 3\nconnect-timeout 7\n"
        "server-poll-timeout 9\nfloat\nlink-mtu 1500\nudp-mtu 1500\ntun-mtu 1400\n"
        "tun-mtu-max 1600\ntun-mtu-extra 32\nmtu-disc no\nport 1194\nlport 0\nrport 1194\n"
        "bind\nnobind\nproto udp\nexplicit-exit-notify 2\nmssfix 1300\nkey-direction 1\n"
        "tls-auth ta.key\nhttp-proxy-retry\nsocks-proxy-retry\nhttp-proxy-timeout 5\n"
        "local 0.0.0.0\n"
    )
    c = parse(NO_REMOTE + f"<connection>\n{body}</connection>\n", read_file)
    assert (c.connect_retry_max, c.connect_timeout, c.server_poll_timeout) == (3, 7, 9)
    assert c.tun_mtu == 1400 and c.link_mtu == 1500 and c.mssfix == 1300
    assert isinstance(c.tls_protection, TlsAuth)
    assert c.tls_protection.direction is KeyDirection.INVERSE
    # the options we refuse keep their own reason inside a block
    for refused, reason in [
        ("fragment 1300", "fragmentation"),
        ("max-packet-size 1400", "control channel"),
        ("mtu-dynamic", "replaced by fragment"),
    ]:
        text = NO_REMOTE + f"<connection>\nremote a\n{refused}\n</connection>\n"
        fails(text, read_file, "not supported here: ", 8)
        fails(text, read_file, reason, 8)
    # a general option is not a connection option, in OpenVPN either
    text = NO_REMOTE + "<connection>\nremote a\ncipher AES-256-GCM\n</connection>\n"
    fails(text, read_file, "not allowed inside a <connection> block", 8)
    # per-connection values must still agree (docs/config-policy.md)
    text = NO_REMOTE + (
        "<connection>\nremote a\nconnect-retry-max 3\n</connection>\n"
        "<connection>\nremote b\nconnect-retry-max 4\n</connection>\n"
    )
    fails(text, read_file, "make them equal", 12)


def test_remote_random_hostname_and_certificate_usage(read_file: Reader) -> None:
    c = parse(
        BASE + "remote-random-hostname\nremote-cert-ku 0x00e0 a0 88\n"
        'remote-cert-eku "TLS Web Server Authentication"\n',
        read_file,
    )
    assert c.remote_random_hostname
    assert c.remote_cert_ku == (0xE0, 0xA0, 0x88)
    assert c.remote_cert_eku == "1.3.6.1.5.5.7.3.1"
    bare = parse(BASE + "remote-cert-ku\nremote-cert-eku 1.3.6.1.5.5.7.3.1\n", read_file)
    assert bare.remote_cert_ku == () and bare.remote_cert_eku == "1.3.6.1.5.5.7.3.1"
    fails(BASE + "remote-cert-ku 1ff\n", read_file, "hex byte", 7)
    fails(BASE + "remote-cert-ku zz\n", read_file, "hex byte", 7)
    fails(BASE + "remote-cert-eku serverAuthx\n", read_file, "dotted OID", 7)


def test_a_later_inline_block_replaces_a_file_directive_unread(read_file: Reader, pki: Pki) -> None:
    asked: list[str] = []

    def reader(path: str) -> bytes:
        asked.append(path)
        return read_file(path)

    text = BASE.replace("ca ca.crt\n", "ca missing-ca.crt\n") + f"<ca>\n{pki.ca.cert_pem}</ca>\n"
    c = parse(text, reader)
    assert "missing-ca.crt" not in asked  # OpenVPN never reads it either
    assert c.ca == pki.ca.cert_pem
    assert any(w.line == 4 and "<ca> block at line 7" in w.message for w in c.warnings)
    assert any(i.name == "ca" and i.line == 4 for i in c.ignored)
    assert all(r.name != "missing-ca.crt" for r in file_references(text))
    # an auth-user-pass prompt followed by an inline block: the block gives the credentials
    c = parse(BASE + "auth-user-pass\n<auth-user-pass>\nu\np\n</auth-user-pass>\n", reader)
    assert c.auth_user_pass is not None and c.auth_user_pass.username == "u"
    # the other way round, a later file is read (and must agree with the block, as before)
    later = BASE.replace("ca ca.crt\n", "") + f"<ca>\n{pki.ca.cert_pem}</ca>\nca ca.crt\n"
    assert parse(later, reader).ca == pki.ca.cert_pem
    assert "ca.crt" in asked


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("keying-material-exporter EXPORTER-x 32", "not supported here: it exports TLS keying"),
        ("tls-remote server", "deprecated in OpenVPN 2.3 and removed in 2.4"),
        ("key-method 2", "removed in OpenVPN 2.5"),
        ("no-name-remapping", "removed in OpenVPN 2.5"),
        ("compat-names", "removed in OpenVPN 2.5"),
        ("ifconfig-push 10.0.0.2 10.0.0.1", "not supported here: a server-side option"),
        ("show-ciphers", "a command-line action"),
        ("pkcs11-pin-cache 60", "PKCS#11"),
    ],
)
def test_real_options_we_do_not_implement_say_so(
    read_file: Reader, line: str, fragment: str
) -> None:
    fails(BASE + line + "\n", read_file, fragment, 7)


def test_static_challenge_as_openvpn_2_6_reads_it(read_file: Reader) -> None:
    creds = "auth-user-pass\n"
    c = parse(BASE + creds + 'static-challenge "Enter the code" 1\n', read_file)
    assert c.static_challenge is not None
    assert (c.static_challenge.text, c.static_challenge.echo) == ("Enter the code", True)
    c = parse(BASE + creds + "static-challenge Code 0\n", read_file)
    assert c.static_challenge is not None and not c.static_challenge.echo
    # atoi: "yes" is 0, with a warning; "2" echoes
    c = parse(BASE + creds + "static-challenge Code yes\n", read_file)
    assert c.static_challenge is not None and not c.static_challenge.echo
    assert any("read as 0" in w.message and w.line == 8 for w in c.warnings)
    c = parse(BASE + creds + "static-challenge Code 2\n", read_file)
    assert c.static_challenge is not None and c.static_challenge.echo
    # 2.6.14 refuses the format argument of 2.7
    fails(BASE + creds + "static-challenge Code 1 concat\n", read_file, "came with OpenVPN 2.7", 8)
    fails(BASE + creds + "static-challenge Code\n", read_file, "", 8)
    # without auth-user-pass it does nothing: said so
    c = parse(BASE + "static-challenge Code 1\n", read_file)
    assert any("without auth-user-pass" in w.message for w in c.warnings)


OPENVPN_OPTIONS = Path(__file__).with_name("openvpn-2.6.14-options.txt")


def test_every_option_openvpn_knows_has_an_outcome(read_file: Reader) -> None:
    # the names OpenVPN 2.6.14's add_option() (options.c) compares p[0] with
    names = OPENVPN_OPTIONS.read_text().split()
    assert len(names) > 300
    handled_by_the_parser = {"connection", "ignore-unknown-option"}
    missing = [n for n in names if n not in TABLE and n not in handled_by_the_parser]
    assert missing == ["parameter"]  # an internal alias of echo, not a config option
    c = parse(BASE + "prng sha1\npreresolve\nudp-mtu 1400\n", read_file)
    assert [i.name for i in c.ignored][-2:] == ["prng", "preresolve"]
    assert c.link_mtu == 1400


def test_a_pkcs12_bundle_without_ca_trusts_the_bundles_ca(pki: Pki, read_file: Reader) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    def bundle(cas: list[object]) -> bytes:
        return pkcs12.serialize_key_and_certificates(
            b"client",
            pki.client.key,
            pki.client.cert,
            cas,
            serialization.NoEncryption(),  # type: ignore[arg-type]
        )

    base = "client\ndev tun\nremote vpn.example.org\npkcs12 user.p12\n"
    files = {"user.p12": bundle([pki.ca.cert]), "ca.crt": pki.ca.cert_pem.encode()}
    c = parse(base, files.__getitem__)
    assert c.ca == pki.ca.cert_pem  # the bundle's CA, as OpenVPN loads it without 'ca'
    assert "server check: 1 CA certificate(s) from the PKCS#12 bundle" in "\n".join(summary(c))
    assert not any("PKCS#12" in w.message for w in c.warnings)  # a pfSense export checks clean
    assert parse(base + "ca ca.crt\n", files.__getitem__).ca == pki.ca.cert_pem
    files["user.p12"] = bundle([])
    fails(base, files.__getitem__, "the PKCS#12 bundle carries no CA certificate")
