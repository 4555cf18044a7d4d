"""openssl_compat.py: each pyOpenSSL route is the one its release wants, and each works.

These run on both stacks `make test` runs (pyOpenSSL 23 on Debian 12, the newest release in
the other); the expectations come from pyOpenSSL's changelog, not from the module's own
detection, so a route that silently became the only one fails here.
"""

from __future__ import annotations

import datetime
import warnings

import OpenSSL
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from miragevpn import openssl_compat
from miragevpn.errors import ConfigError
from miragevpn.openssl_compat import (
    set_tls13_ciphersuites,
    ssl_certificate,
    ssl_private_key,
    trust_certificate,
    verify_error_text,
)

RELEASE = tuple(int(part) for part in OpenSSL.__version__.split(".")[:2])
TLS13_SUITES = {
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
}


@pytest.fixture(scope="module")
def identity() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "compat")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def tls13_suites(ctx: SSL.Context) -> set[str]:
    return set(SSL.Connection(ctx, None).get_cipher_list()) & TLS13_SUITES


def test_version_is_parsed() -> None:
    assert openssl_compat.PYOPENSSL_VERSION == RELEASE
    assert RELEASE >= (23, 0)  # pyproject's floor, Debian 12


def test_the_ciphersuites_route_follows_the_release() -> None:
    """pyOpenSSL 25.2 added Context.set_tls13_ciphersuites: from then on the public call."""
    expected = "public" if RELEASE >= (25, 2) else "private"
    assert expected == openssl_compat.CIPHERSUITES_ROUTE


def test_certificate_objects_follow_the_release() -> None:
    """pyOpenSSL 24.3 takes cryptography objects and deprecates its own X509/PKey there."""
    assert (RELEASE >= (24, 3)) == openssl_compat.TAKES_CRYPTOGRAPHY_OBJECTS


def test_converted_identity_is_accepted_without_a_warning(
    identity: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    cert, key = identity
    ctx = SSL.Context(SSL.TLS_METHOD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctx.use_certificate(ssl_certificate(cert))
        ctx.use_privatekey(ssl_private_key(key))
        ctx.add_extra_chain_cert(ssl_certificate(cert))
        trust_certificate(ctx, cert)
    ctx.check_privatekey()


def test_the_form_we_avoid_is_really_refused_or_deprecated(
    identity: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    """Proof the conversion matters on this stack: the other form fails or warns."""
    cert, _ = identity
    ctx = SSL.Context(SSL.TLS_METHOD)
    if openssl_compat.TAKES_CRYPTOGRAPHY_OBJECTS:
        with pytest.warns(DeprecationWarning):
            ctx.use_certificate(crypto.X509.from_cryptography(cert))
    else:
        with pytest.raises(TypeError):
            ctx.use_certificate(cert)


@pytest.mark.parametrize("route", ["selected", "private"])
def test_ciphersuites_are_applied(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both routes work on every stack: the private binding is still there in 26.x."""
    if route == "private":
        monkeypatch.setattr(openssl_compat, "CIPHERSUITES_ROUTE", "private")
    assert tls13_suites(SSL.Context(SSL.TLS_METHOD)) == TLS13_SUITES
    ctx = SSL.Context(SSL.TLS_METHOD)
    set_tls13_ciphersuites(ctx, "TLS_CHACHA20_POLY1305_SHA256")
    assert tls13_suites(ctx) == {"TLS_CHACHA20_POLY1305_SHA256"}


@pytest.mark.parametrize("route", ["selected", "private"])
@pytest.mark.parametrize("suites", ["TLS_NO_SUCH_SUITE", "TLS_AES_256_GCM_SHA384:é"])
def test_refused_ciphersuites_are_a_config_error(
    route: str, suites: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if route == "private":
        monkeypatch.setattr(openssl_compat, "CIPHERSUITES_ROUTE", "private")
    ctx = SSL.Context(SSL.TLS_METHOD)
    with pytest.raises(ConfigError, match="tls-ciphersuites not accepted"):
        set_tls13_ciphersuites(ctx, suites)
    # OpenSSL's error queue is left clean: the next call on the context still works
    set_tls13_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
    assert tls13_suites(ctx) == {"TLS_AES_128_GCM_SHA256"}


@pytest.mark.parametrize(
    ("errno", "words"),
    [(10, "certificate has expired"), (26, "certificate purpose"), (999999, "unknown")],
)
def test_verify_error_text_is_openssls(errno: int, words: str) -> None:
    """The private route this needs still exists on this stack and gives OpenSSL's words."""
    assert words in verify_error_text(errno).lower()
