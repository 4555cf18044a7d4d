"""The few pyOpenSSL calls whose right form depends on the pyOpenSSL release (23 to 26 and on).

    ctx.use_certificate(ssl_certificate(cert))      # cert: cryptography x509.Certificate
    ctx.use_privatekey(ssl_private_key(key))        # key: a cryptography private key
    set_tls13_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384")

Debian 12 ships pyOpenSSL 23.0, whose `Context.use_certificate`, `use_privatekey` and
`add_extra_chain_cert` take only pyOpenSSL's own `X509`/`PKey` objects. pyOpenSSL 24.3
(CHANGELOG "Deprecations") made the same calls take `cryptography` objects and deprecated
passing its own, ahead of removing `X509`/`PKey`; so we pass whichever the installed release
wants. pyOpenSSL 25.2 added `Context.set_tls13_ciphersuites`; before it the only route to
OpenSSL's `SSL_CTX_set_ciphersuites` is pyOpenSSL's private cffi binding (`OpenSSL._util.lib`),
which we use only where the public method does not exist.

`X509Store.add_cert` still takes only `X509` in every release (26.4), so `trust_certificate`
always converts. No release has a public call for OpenSSL's text of a certificate verification
error code, so `verify_error_text` uses the private binding in every release.
"""

from __future__ import annotations

from typing import Any, Final

import OpenSSL
from cryptography import x509
from OpenSSL import SSL, crypto

from .errors import ConfigError

__all__ = [
    "CIPHERSUITES_ROUTE",
    "PYOPENSSL_VERSION",
    "TAKES_CRYPTOGRAPHY_OBJECTS",
    "set_tls13_ciphersuites",
    "ssl_certificate",
    "ssl_private_key",
    "trust_certificate",
    "verify_error_text",
]


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a pyOpenSSL version string such as "23.0.0" or "26.4.0"."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise RuntimeError(f"unrecognised pyOpenSSL version {version!r}") from None


PYOPENSSL_VERSION: Final = _release(OpenSSL.__version__)
TAKES_CRYPTOGRAPHY_OBJECTS: Final = PYOPENSSL_VERSION >= (24, 3)
# "public": Context.set_tls13_ciphersuites (pyOpenSSL >= 25.2); "private": the cffi binding
CIPHERSUITES_ROUTE: Final = (
    "public" if hasattr(SSL.Context, "set_tls13_ciphersuites") else "private"
)


def ssl_certificate(certificate: x509.Certificate) -> Any:
    """What this pyOpenSSL's use_certificate / add_extra_chain_cert want for `certificate`."""
    if TAKES_CRYPTOGRAPHY_OBJECTS:
        return certificate
    return crypto.X509.from_cryptography(certificate)


def ssl_private_key(key: Any) -> Any:
    """What this pyOpenSSL's use_privatekey wants for a cryptography private key."""
    if TAKES_CRYPTOGRAPHY_OBJECTS:
        return key
    return crypto.PKey.from_cryptography_key(key)


def trust_certificate(ctx: SSL.Context, certificate: x509.Certificate) -> None:
    """Add `certificate` to the context's verification store (X509Store.add_cert takes only
    pyOpenSSL's own X509 in every release so far)."""
    store = ctx.get_cert_store()
    if store is None:  # typed Optional since pyOpenSSL 24; a new SSL_CTX always has a store
        raise RuntimeError("pyOpenSSL context without a certificate store")
    store.add_cert(crypto.X509.from_cryptography(certificate))


def set_tls13_ciphersuites(ctx: SSL.Context, suites: str) -> None:
    """OpenSSL's SSL_CTX_set_ciphersuites on `ctx`; ConfigError if OpenSSL refuses `suites`."""
    try:
        encoded = suites.encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(f"tls-ciphersuites not accepted by OpenSSL: {suites!r}") from None
    if CIPHERSUITES_ROUTE == "public":
        try:
            ctx.set_tls13_ciphersuites(encoded)
        except SSL.Error:
            raise ConfigError(f"tls-ciphersuites not accepted by OpenSSL: {suites!r}") from None
        return
    from OpenSSL._util import lib  # private: the only route before pyOpenSSL 25.2

    if lib.SSL_CTX_set_ciphersuites(ctx._context, encoded) != 1:
        lib.ERR_clear_error()  # so the refusal cannot surface in a later, unrelated call
        raise ConfigError(f"tls-ciphersuites not accepted by OpenSSL: {suites!r}")


def verify_error_text(errno: int) -> str:
    """OpenSSL's words for an X509_V_ERR_* code (X509_verify_cert_error_string)."""
    from OpenSSL._util import ffi, lib  # private: no public route in any release

    text: bytes = ffi.string(lib.X509_verify_cert_error_string(errno))
    return text.decode("ascii", "replace")
