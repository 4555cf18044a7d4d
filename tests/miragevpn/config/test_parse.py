"""Directive handling, conflict rules and key validation, one rule per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from miragevpn.config import parse_config
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
from miragevpn.errors import ConfigError

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


def test_cert_without_key_and_encrypted_key(read_file: Reader) -> None:
    fails(BASE.replace("key client.key\n", ""), read_file, "needs its private key", 5)
    fails(BASE.replace("client.key", "client-encrypted.key"), read_file, "passphrase", 6)
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
