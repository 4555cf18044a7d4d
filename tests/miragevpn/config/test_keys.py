"""Key material from untrusted profiles: PEM blocks found in one pass (issue 8 finding 4) and
every crypto-library failure as our error in plain words (finding 7)."""

from __future__ import annotations

import base64
import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from miragevpn.config import parse_config
from miragevpn.config.keys import (
    KeyMaterialError,
    parse_certificates,
    parse_pkcs12,
    parse_private_key,
    pem_blocks,
)
from miragevpn.config.model import Secret
from miragevpn.config.unlock import cert_matches_key
from miragevpn.errors import ConfigError
from tests.helpers.pki import Pki


def _off_curve_cert() -> tuple[bytes, bytes]:
    """(certificate PEM whose EC point is not on P-256, the matching-looking private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = datetime.datetime(2025, 1, 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert der.count(point) == 1
    bad_point = point[:-1] + bytes([point[-1] ^ 1])  # y + 1 or y - 1: off the curve
    bad = der.replace(point, bad_point)
    body = base64.encodebytes(bad).decode().replace("\n", "")
    rows = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(rows) + "\n-----END CERTIFICATE-----\n"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.encode(), key_pem


def test_off_curve_certificate_is_a_config_error() -> None:
    """Finding 7: cert.public_key() raised ValueError out of cert_matches_key."""
    cert_pem, key_pem = _off_curve_cert()
    with pytest.raises(KeyMaterialError) as info:
        cert_matches_key(cert_pem.decode(), Secret(key_pem))
    assert str(info.value) == "the public key of the client certificate does not decode"
    files = {"c.crt": cert_pem, "c.key": key_pem}
    text = (
        "client\ndev tun\nremote a\npeer-fingerprint "
        + ":".join(["AB"] * 32)
        + "\ncert c.crt\nkey c.key\n"
    )
    try:
        parse_config(text, read_file=files.__getitem__)
    except ConfigError as exc:  # at `cert` (lazy libraries) or at load (strict ones)
        assert exc.line == 5 and exc.directive == "cert"
        assert exc.message.endswith("does not decode"), exc.message
    else:
        pytest.fail("an off-curve certificate was accepted")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: parse_certificates(
                b"-----BEGIN CERTIFICATE-----\nMIIB////\n-----END CERTIFICATE-----\n", "the CA"
            ),
            "the CA: certificate 1 does not decode",
        ),
        (
            lambda: parse_private_key(
                b"-----BEGIN PRIVATE KEY-----\nMIIB////\n-----END PRIVATE KEY-----\n"
            ),
            "the private key does not decode",
        ),
        (lambda: parse_pkcs12(b"\x30\x82\x01\x00garbage", inline=False), "does not decode"),
    ],
)
def test_library_errors_become_plain_messages(call: object, message: str) -> None:
    with pytest.raises(KeyMaterialError) as info:
        call()  # type: ignore[operator]
    assert message in str(info.value)
    assert "(" not in str(info.value) and "error" not in str(info.value).lower()


def test_pem_blocks_in_one_pass() -> None:
    """Finding 4: 32,000 unmatched BEGIN lines took 79 s (the regex rescanned to the end)."""
    text = "-----BEGIN A-----\n" * 32000 + "-----BEGIN CERTIFICATE-----\nAA==\n"
    start = time.monotonic()
    assert pem_blocks(text, "CERTIFICATE") == []
    assert time.monotonic() - start < 1.0


def test_pem_blocks_skip_text_around_and_keep_order() -> None:
    text = (
        "Certificate:\n  Data: ...\n"
        "-----BEGIN CERTIFICATE-----\r\nAAA\r\n-----END CERTIFICATE-----\r\n"
        "junk\n  -----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n"
        "-----BEGIN CERTIFICATE-----\nCCC\n-----BEGIN CERTIFICATE-----\nDDD\n"
        "-----END CERTIFICATE-----\n"
    )
    assert pem_blocks(text, "CERTIFICATE") == [
        "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nDDD\n-----END CERTIFICATE-----\n",
    ]
    assert pem_blocks(text, "PRIVATE KEY") == [
        "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n"
    ]


def test_pkcs12_with_a_password_is_kept_for_later_and_broken_bundles_are_refused(
    pki: Pki,
) -> None:
    protected = pkcs12.serialize_key_and_certificates(
        b"client",
        pki.client.key,
        pki.client.cert,
        None,
        serialization.BestAvailableEncryption(b"secret"),
    )
    # opened when the passphrase is known (tests/miragevpn/config/test_unlock.py)
    assert parse_pkcs12(protected, inline=False).value == protected
    for broken in (protected[:-40], b"\x30\x03\x02\x01\x03", b"", b"\x04\x00"):
        with pytest.raises(KeyMaterialError) as info:
            parse_pkcs12(broken, inline=False)
        assert "PKCS#12 bundle" in str(info.value)
    with pytest.raises(KeyMaterialError) as info:
        parse_pkcs12(b"\x04\x00", inline=False)
    assert str(info.value) == "the PKCS#12 bundle does not decode"
    plain = pkcs12.serialize_key_and_certificates(
        b"client", pki.client.key, pki.client.cert, None, serialization.NoEncryption()
    )
    assert parse_pkcs12(plain, inline=False).value == plain
