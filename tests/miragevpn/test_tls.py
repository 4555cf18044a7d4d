"""TlsSession against an in-memory pyOpenSSL server, with a PKI generated here."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from miragevpn.config.model import Secret, TlsVersion, VerifyX509Name, X509NameKind
from miragevpn.errors import ConfigError, LocalProtocolError, ServerCertificateRejected
from miragevpn.openssl_compat import ssl_certificate, ssl_private_key, trust_certificate
from miragevpn.tls import (
    TlsSession,
    TlsSettings,
    build_context,
    check_leaf,
    common_name,
    describe_alert,
    key_usage_bits,
    load_pem_certificates,
    openvpn_subject,
)

NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Identity:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(cn: str = "Test CA") -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Identity(cert, key)


def make_leaf(
    ca: Identity,
    cn: str,
    *,
    eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
    key_usage: bool = True,
    not_after: datetime.datetime | None = None,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, True, False, False, False, False),
            critical=True,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Identity(builder.sign(ca.key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Identity]:
    ca = make_ca()
    return {
        "ca": ca,
        "server": make_leaf(ca, "server"),
        "client": make_leaf(ca, "client", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
        "other_ca": make_ca("Other CA"),
    }


def server_connection(
    server: Identity, *, ca: Identity | None = None, max_version: int | None = None
) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(ssl_certificate(server.cert))
    ctx.use_privatekey(ssl_private_key(server.key))
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if ca is not None:  # require a client certificate
        trust_certificate(ctx, ca.cert)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[4]))
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    return conn


def pump(client: TlsSession, server: SSL.Connection, rounds: int = 10) -> None:
    """Shuttle records both ways until the handshake finishes on both ends (bounded)."""
    for _ in range(rounds):
        data = client.outgoing_records()
        if data:
            server.bio_write(data)
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        reply = b""
        while True:
            try:
                reply += server.bio_read(65536)
            except SSL.WantReadError:
                break
        if reply:
            client.receive_records(reply)
        if client.handshake_complete and not data and not reply:
            return
    raise AssertionError("handshake did not finish")


def test_handshake_with_ca_then_application_data_both_ways(pki: dict[str, Identity]) -> None:
    client = TlsSession(TlsSettings(ca_pem=pki["ca"].cert_pem, remote_cert_tls_server=True))
    server = server_connection(pki["server"])
    pump(client, server)
    assert client.handshake_complete
    assert client.version == "TLSv1.3"
    assert client.cipher.startswith("TLS_")
    assert "CN=server" in client.peer_subject

    client.write_application_data(b"hello\x00")
    server.bio_write(client.outgoing_records())
    assert server.recv(100) == b"hello\x00"
    server.send(b"world\x00")
    client.receive_records(server.bio_read(65536))
    assert client.read_application_data() == b"world\x00"
    assert client.read_application_data() == b""


def test_exporter_matches_the_server_side(pki: dict[str, Identity]) -> None:
    client = TlsSession(TlsSettings(ca_pem=pki["ca"].cert_pem))
    server = server_connection(pki["server"])
    pump(client, server)
    label = b"EXPORTER-OpenVPN-datakeys"
    mine = client.export_keying_material(label, 256)
    assert len(mine) == 256
    assert mine == server.export_keying_material(label, 256)


def test_tls12_max_version_and_cipher_list(pki: dict[str, Identity]) -> None:
    settings = TlsSettings(
        ca_pem=pki["ca"].cert_pem,
        version_max=TlsVersion.TLS1_2,
        cipher_list="ECDHE-ECDSA-AES128-GCM-SHA256",
    )
    client = TlsSession(settings)
    server = server_connection(pki["server"])
    pump(client, server)
    assert client.version == "TLSv1.2"
    assert client.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert client.export_keying_material(b"EXPORTER-x", 32) == server.export_keying_material(
        b"EXPORTER-x", 32
    )


def test_ciphersuites_restricts_tls13(pki: dict[str, Identity]) -> None:
    settings = TlsSettings(ca_pem=pki["ca"].cert_pem, ciphersuites="TLS_CHACHA20_POLY1305_SHA256")
    client = TlsSession(settings)
    pump(client, server_connection(pki["server"]))
    assert client.cipher == "TLS_CHACHA20_POLY1305_SHA256"


def test_min_or_highest_refuses_a_tls12_server(pki: dict[str, Identity]) -> None:
    client = TlsSession(TlsSettings(ca_pem=pki["ca"].cert_pem, version_min_or_highest=True))
    server = server_connection(pki["server"], max_version=SSL.TLS1_2_VERSION)
    with pytest.raises(Exception) as info:
        pump(client, server)
    assert not client.handshake_complete
    assert info.type is not AssertionError


def test_client_certificate_is_presented(pki: dict[str, Identity]) -> None:
    client_id = pki["client"]
    settings = TlsSettings(
        ca_pem=pki["ca"].cert_pem, cert_pem=client_id.cert_pem, key_pem=client_id.key_pem
    )
    client = TlsSession(settings)
    server = server_connection(pki["server"], ca=pki["ca"])
    pump(client, server)
    client.write_application_data(b"x")
    server.bio_write(client.outgoing_records())
    assert server.recv(10) == b"x"
    peer = server.get_peer_certificate()
    assert peer is not None
    assert common_name(peer.to_cryptography()) == "client"


def expect_rejection(settings: TlsSettings, server: Identity) -> str:
    client = TlsSession(settings)
    with pytest.raises(ServerCertificateRejected) as info:
        pump(client, server_connection(server))
    # our refusal, never worded as the server's
    assert str(info.value) == f"we rejected the server's certificate: {info.value.reason}"
    return info.value.reason


def test_wrong_ca_is_rejected_in_words(pki: dict[str, Identity]) -> None:
    reason = expect_rejection(TlsSettings(ca_pem=pki["other_ca"].cert_pem), pki["server"])
    assert reason == "server certificate not signed by the configured CA"


def test_expired_server_certificate(pki: dict[str, Identity]) -> None:
    old = make_leaf(pki["ca"], "server", not_after=NOW - datetime.timedelta(hours=1))
    reason = expect_rejection(TlsSettings(ca_pem=pki["ca"].cert_pem), old)
    assert "expired" in reason


def test_remote_cert_tls_server_needs_server_auth_eku(pki: dict[str, Identity]) -> None:
    settings = TlsSettings(ca_pem=pki["ca"].cert_pem, remote_cert_tls_server=True)
    reason = expect_rejection(settings, pki["client"])  # a client certificate posing as server
    assert reason == "server certificate lacks TLS Web Server Authentication EKU"
    no_ku = make_leaf(pki["ca"], "server", key_usage=False)
    assert "Key Usage" in expect_rejection(settings, no_ku)


def test_remote_cert_ku_and_eku_as_openvpn_checks_them(pki: dict[str, Identity]) -> None:
    server = pki["server"].cert  # digitalSignature, keyEncipherment, keyAgreement; serverAuth
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage_bits(usage) == 0x80 | 0x20 | 0x08  # OpenVPN's bit order
    for accepted in [(), (0xA0,), (0x88,), (0x01, 0xA8)]:  # all bits of one value
        assert check_leaf(server, TlsSettings(remote_cert_ku=accepted)) is None
    reason = check_leaf(server, TlsSettings(remote_cert_ku=(0x84, 0x40)))
    assert reason == "server certificate key usage a8 holds none of 84 40 (remote-cert-ku)"
    no_ku = make_leaf(pki["ca"], "server", key_usage=False).cert
    assert "lacks the Key Usage extension (remote-cert-ku)" in str(
        check_leaf(no_ku, TlsSettings(remote_cert_ku=()))
    )
    assert check_leaf(server, TlsSettings(remote_cert_eku="1.3.6.1.5.5.7.3.1")) is None
    assert "1.3.6.1.5.5.7.3.2 (remote-cert-eku)" in str(
        check_leaf(server, TlsSettings(remote_cert_eku="1.3.6.1.5.5.7.3.2"))
    )
    # and during a real handshake
    settings = TlsSettings(ca_pem=pki["ca"].cert_pem, remote_cert_eku="1.3.6.1.5.5.7.3.2")
    assert "remote-cert-eku" in expect_rejection(settings, pki["server"])
    settings = TlsSettings(ca_pem=pki["ca"].cert_pem, remote_cert_ku=(0x40,))
    assert "remote-cert-ku" in expect_rejection(settings, pki["server"])


def test_verify_x509_name_kinds(pki: dict[str, Identity]) -> None:
    ca_pem = pki["ca"].cert_pem
    ok = [
        VerifyX509Name("server", X509NameKind.NAME),
        VerifyX509Name("serv", X509NameKind.NAME_PREFIX),
        VerifyX509Name("C=DE, O=Test, CN=server", X509NameKind.SUBJECT),
        VerifyX509Name("CN=server,O=Test,C=DE", X509NameKind.SUBJECT),
    ]
    for wanted in ok:
        client = TlsSession(TlsSettings(ca_pem=ca_pem, verify_x509_name=wanted))
        pump(client, server_connection(pki["server"]))
        assert client.handshake_complete
    bad = [
        VerifyX509Name("serve", X509NameKind.NAME),
        VerifyX509Name("client", X509NameKind.NAME_PREFIX),
        VerifyX509Name("CN=server", X509NameKind.SUBJECT),
    ]
    for wanted in bad:
        reason = expect_rejection(
            TlsSettings(ca_pem=ca_pem, verify_x509_name=wanted), pki["server"]
        )
        assert "verify-x509-name" in reason


def test_peer_fingerprint_without_ca(pki: dict[str, Identity]) -> None:
    server = pki["server"]
    digest = hashlib.sha256(server.cert.public_bytes(serialization.Encoding.DER)).digest()
    client = TlsSession(TlsSettings(peer_fingerprints=(b"\x00" * 32, digest)))
    pump(client, server_connection(server))
    assert client.handshake_complete
    reason = expect_rejection(TlsSettings(peer_fingerprints=(b"\x01" * 32,)), server)
    assert "fingerprint" in reason


def test_nothing_to_trust_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TlsSession(TlsSettings())


def test_application_data_before_handshake_is_our_error(pki: dict[str, Identity]) -> None:
    client = TlsSession(TlsSettings(ca_pem=pki["ca"].cert_pem))
    assert client.outgoing_records().startswith(b"\x16\x03")  # ClientHello ready at once
    with pytest.raises(LocalProtocolError):
        client.write_application_data(b"x")
    with pytest.raises(LocalProtocolError):
        client.export_keying_material(b"EXPORTER-x", 8)


def test_garbage_from_the_server_is_a_remote_error(pki: dict[str, Identity]) -> None:
    from miragevpn.errors import RemoteProtocolError

    client = TlsSession(TlsSettings(ca_pem=pki["ca"].cert_pem))
    with pytest.raises(RemoteProtocolError):
        client.receive_records(b"\x15\x03\x03\x00\x02\x02\x28" + b"garbage" * 10)


def test_pem_bundle_and_openvpn_subject(pki: dict[str, Identity]) -> None:
    bundle = "junk\n" + pki["ca"].cert_pem + "\n" + pki["other_ca"].cert_pem
    certs = load_pem_certificates(bundle)
    assert [c.subject for c in certs] == [pki["ca"].cert.subject, pki["other_ca"].cert.subject]
    assert openvpn_subject(pki["server"].cert) == "C=DE, O=Test, CN=server"


@pytest.mark.parametrize(
    ("openssl", "words"),
    [
        ("tlsv1 alert unknown ca", "the server rejected our certificate (TLS alert: unknown CA)"),
        (
            "sslv3 alert bad certificate",
            "the server rejected our certificate (TLS alert: bad certificate)",
        ),
        (
            "tlsv13 alert certificate required",
            "the server wants a client certificate and we "
            "sent none (cert/key or pkcs12) (TLS alert: certificate required)",
        ),
        (
            "tlsv1 alert no application protocol",
            "the server ended the TLS session (TLS alert: no application protocol)",
        ),
        ("decryption failed or bad record mac", None),
        ("certificate verify failed", None),
    ],
)
def test_server_alerts_in_plain_words(openssl: str, words: str | None) -> None:
    described = describe_alert(openssl)
    assert (described[0] if described else None) == words


# ---------------------------------------------------------------- locked key material

PASSPHRASE = Secret(b"locked up")


def _bundle(client: Identity, cas: list[Identity]) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        b"client",
        client.key,
        client.cert,
        [ca.cert for ca in cas],  # type: ignore[misc]
        serialization.BestAvailableEncryption(PASSPHRASE.value),
    )


def _presented(settings: TlsSettings, pki: dict[str, Identity]) -> str | None:
    """Handshake with a server that wants a client certificate; the CN it got."""
    client = TlsSession(settings)
    server = server_connection(pki["server"], ca=pki["ca"])
    pump(client, server)
    client.write_application_data(b"x")
    server.bio_write(client.outgoing_records())
    assert server.recv(10) == b"x"
    peer = server.get_peer_certificate()
    return None if peer is None else common_name(peer.to_cryptography())


def test_an_encrypted_key_is_unlocked_with_the_passphrase(pki: dict[str, Identity]) -> None:
    client_id = pki["client"]
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        locked = client_id.key.private_bytes(
            serialization.Encoding.PEM,
            form,
            serialization.BestAvailableEncryption(PASSPHRASE.value),
        )
        settings = TlsSettings(
            ca_pem=pki["ca"].cert_pem, cert_pem=client_id.cert_pem, key_pem=locked
        )
        assert _presented(replace(settings, key_passphrase=PASSPHRASE), pki) == "client"
        for passphrase, words in (
            (Secret(b"wrong"), "the passphrase is wrong: it does not unlock the private key"),
            (None, "the private key is encrypted and no passphrase was given"),
        ):
            with pytest.raises(ConfigError) as info:
                build_context(replace(settings, key_passphrase=passphrase))
            assert info.value.message == words


def test_a_protected_bundle_without_ca_trusts_its_own_ca(pki: dict[str, Identity]) -> None:
    der = _bundle(pki["client"], [pki["ca"]])
    settings = TlsSettings(pkcs12_der=der, key_passphrase=PASSPHRASE)
    assert _presented(settings, pki) == "client"
    # with `ca` the bundle's certificates are only our chain: an unrelated `ca` fails
    reason = expect_rejection(replace(settings, ca_pem=pki["other_ca"].cert_pem), pki["server"])
    assert reason == "server certificate not signed by the configured CA"
    with pytest.raises(ConfigError) as info:
        build_context(replace(settings, key_passphrase=Secret(b"wrong")))
    assert info.value.message.startswith("the passphrase is wrong: it does not unlock the PKCS#12")
    lonely = TlsSettings(pkcs12_der=_bundle(pki["client"], []), key_passphrase=PASSPHRASE)
    with pytest.raises(ConfigError) as info:
        build_context(lonely)
    assert "the PKCS#12 bundle carries no CA certificate" in info.value.message


def test_the_settings_repr_shows_no_key_material() -> None:
    settings = TlsSettings(
        key_pem=b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n", pkcs12_der=b"\x30\x82bundle"
    )
    assert "c2VjcmV0" not in repr(settings) and "bundle" not in repr(settings)
