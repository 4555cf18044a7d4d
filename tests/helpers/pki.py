"""A throwaway PKI for tests: CA, server and client certificates, static keys, tls-crypt-v2 keys,
the client key encrypted (PKCS#8 and traditional PEM) and the client's PKCS#12 bundles.

Everything is generated once per test session (`make_pki()` is cached) with EC P-256 keys, which
take milliseconds; OpenVPN 2.6 accepts them with `dh none`. Only `cryptography` 38 (Debian 12)
APIs are used (each also works on the newest release: encrypted traditional PEM and PKCS#12
with `BestAvailableEncryption`, AES-256 on both). The tls-crypt-v2 keys come from the real
`openvpn --genkey`, so their format is OpenVPN's own, not our reading of it.

Usage:
    pki = make_pki()
    files = write_pki(pki, tmp_path)          # 0600 files: ca.crt, server.crt, ..., ta.key
    files.ca, files.client_key, ...           # paths for config files
"""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STATIC_KEY_BYTES = 256  # OpenVPN `struct key2`: two (cipher[64], hmac[64]) halves
STATIC_KEY_HEADER = "-----BEGIN OpenVPN Static key V1-----"
STATIC_KEY_FOOTER = "-----END OpenVPN Static key V1-----"
ENCRYPTED_KEY_PASSPHRASE = "correct horse battery staple"


def static_key_text(key: bytes) -> str:
    """`key` (256 bytes) in the armour `openvpn --genkey secret` writes: 16 lines of 32 hex."""
    if len(key) != STATIC_KEY_BYTES:
        raise ValueError(f"an OpenVPN static key is {STATIC_KEY_BYTES} bytes, not {len(key)}")
    hex_text = key.hex()
    lines = [hex_text[i : i + 32] for i in range(0, len(hex_text), 32)]
    return (
        "\n".join(
            [
                "#",
                "# 2048 bit OpenVPN static key",
                "#",
                STATIC_KEY_HEADER,
                *lines,
                STATIC_KEY_FOOTER,
            ]
        )
        + "\n"
    )


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM text."""

    cert_pem: str
    key_pem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity  # CN "server", EKU serverAuth, KU digitalSignature+keyEncipherment
    client: Identity  # CN "client", EKU clientAuth, signed by `ca`
    client_key_encrypted_pem: str  # the client key, PKCS#8 encrypted with ENCRYPTED_KEY_PASSPHRASE
    # the same, traditional form (Proc-Type: 4,ENCRYPTED, DEK-Info: AES-256-CBC)
    client_key_encrypted_traditional_pem: str
    client_p12: bytes  # client key + certificate + the CA, no password (DER)
    client_p12_protected: bytes  # the same, protected by ENCRYPTED_KEY_PASSPHRASE
    wrong_ca: Identity  # an unrelated CA
    wrong_client: Identity  # a client certificate signed by `wrong_ca`: the server rejects it
    ta_key: str  # "OpenVPN Static key V1" text, for tls-auth and tls-crypt
    wrong_ta_key: str  # another static key, for "wrong key" tests
    tls_crypt_v2_server: str  # `openvpn --genkey tls-crypt-v2-server`
    tls_crypt_v2_client: str  # `openvpn --genkey tls-crypt-v2-client` made from the server key


@dataclass(frozen=True)
class PkiFiles:
    """Where `write_pki` put each file."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    client_key_encrypted_traditional: Path
    client_p12: Path
    client_p12_protected: Path
    askpass: Path  # ENCRYPTED_KEY_PASSPHRASE on its first line
    wrong_ca: Path
    wrong_client_cert: Path
    wrong_client_key: Path
    ta_key: Path
    wrong_ta_key: Path
    tls_crypt_v2_server: Path
    tls_crypt_v2_client: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qubes-miragevpn tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


def make_ca(common_name: str) -> Identity:
    key = _key()
    name = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    return Identity(*_pem(cert, key), cert=cert, key=key)


def make_leaf(ca: Identity, common_name: str, *, server: bool) -> Identity:
    """A server (serverAuth) or client (clientAuth) certificate signed by `ca`."""
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=server,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    cert = _validity(builder).sign(ca.key, hashes.SHA256())
    return Identity(*_pem(cert, key), cert=cert, key=key)


def pkcs12_bundle(
    client: Identity, cas: list[x509.Certificate], passphrase: str | None = None
) -> bytes:
    """`client`'s key and certificate with `cas`, as a PKCS#12 bundle (DER), protected by
    `passphrase` if given (AES-256 with cryptography 38 and with the newest release)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase is not None
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        b"client",
        client.key,
        client.cert,
        cas,  # type: ignore[arg-type]  # the parameter's type differs between releases
        encryption,
    )


def _tls_crypt_v2_keys() -> tuple[str, str]:
    """A tls-crypt-v2 server key and a client key wrapped by it, made by the real openvpn."""
    openvpn = shutil.which("openvpn") or "/usr/sbin/openvpn"
    with tempfile.TemporaryDirectory(prefix="mvpn-pki-") as tmp:
        server = Path(tmp, "v2srv.key")
        client = Path(tmp, "v2cli.key")
        subprocess.run(
            [openvpn, "--genkey", "tls-crypt-v2-server", str(server)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        subprocess.run(
            [
                openvpn,
                "--tls-crypt-v2",
                str(server),
                "--genkey",
                "tls-crypt-v2-client",
                str(client),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return server.read_text(), client.read_text()


@functools.cache
def make_pki() -> Pki:
    """The session's PKI (generated on first use, then shared)."""
    ca = make_ca("qubes-miragevpn test CA")
    wrong_ca = make_ca("some other CA")
    client = make_leaf(ca, "client", server=False)
    locked = serialization.BestAvailableEncryption(ENCRYPTED_KEY_PASSPHRASE.encode())
    encrypted = client.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked
    ).decode()
    traditional = client.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, locked
    ).decode()
    v2_server, v2_client = _tls_crypt_v2_keys()
    return Pki(
        ca=ca,
        server=make_leaf(ca, "server", server=True),
        client=client,
        client_key_encrypted_pem=encrypted,
        client_key_encrypted_traditional_pem=traditional,
        client_p12=pkcs12_bundle(client, [ca.cert]),
        client_p12_protected=pkcs12_bundle(client, [ca.cert], ENCRYPTED_KEY_PASSPHRASE),
        wrong_ca=wrong_ca,
        wrong_client=make_leaf(wrong_ca, "client", server=False),
        ta_key=static_key_text(os.urandom(STATIC_KEY_BYTES)),
        wrong_ta_key=static_key_text(os.urandom(STATIC_KEY_BYTES)),
        tls_crypt_v2_server=v2_server,
        tls_crypt_v2_client=v2_client,
    )


def write_pki(pki: Pki, directory: Path | str) -> PkiFiles:
    """Write every file of `pki` into `directory` (created if needed), each with mode 0600."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contents: dict[str, tuple[str, str | bytes]] = {
        "ca": ("ca.crt", pki.ca.cert_pem),
        "server_cert": ("server.crt", pki.server.cert_pem),
        "server_key": ("server.key", pki.server.key_pem),
        "client_cert": ("client.crt", pki.client.cert_pem),
        "client_key": ("client.key", pki.client.key_pem),
        "client_key_encrypted": ("client-encrypted.key", pki.client_key_encrypted_pem),
        "client_key_encrypted_traditional": (
            "client-encrypted-traditional.key",
            pki.client_key_encrypted_traditional_pem,
        ),
        "client_p12": ("client.p12", pki.client_p12),
        "client_p12_protected": ("client-protected.p12", pki.client_p12_protected),
        "askpass": ("askpass.txt", ENCRYPTED_KEY_PASSPHRASE + "\n"),
        "wrong_ca": ("wrong-ca.crt", pki.wrong_ca.cert_pem),
        "wrong_client_cert": ("wrong-client.crt", pki.wrong_client.cert_pem),
        "wrong_client_key": ("wrong-client.key", pki.wrong_client.key_pem),
        "ta_key": ("ta.key", pki.ta_key),
        "wrong_ta_key": ("wrong-ta.key", pki.wrong_ta_key),
        "tls_crypt_v2_server": ("v2srv.key", pki.tls_crypt_v2_server),
        "tls_crypt_v2_client": ("v2cli.key", pki.tls_crypt_v2_client),
    }
    assert {f.name for f in fields(PkiFiles)} == set(contents)
    paths: dict[str, Path] = {}
    for attr, (filename, text) in contents.items():
        path = directory / filename
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.chmod(path, 0o600)  # also when the file existed with other bits
        paths[attr] = path
    return PkiFiles(**paths)
