"""Key material behind a passphrase: encrypted PEM private keys and password-protected PKCS#12.

What OpenVPN 2.6.14 does, and so do we:
- the passphrase is the first line of the `askpass` file (misc.c get_user_pass_cr with
  GET_USER_PASS_PASSWORD_ONLY: one fgets, then chomp of trailing CR/LF; an empty line is fatal);
  bare `askpass` (or `askpass stdin`), and no `askpass` at all, mean "ask on the console"
  (ssl.c pem_password_callback asks "even if --askpass wasn't specified");
- an encrypted PEM key is traditional (`Proc-Type: 4,ENCRYPTED` and `DEK-Info` inside an
  RSA/EC PRIVATE KEY block) or PKCS#8 (`-----BEGIN ENCRYPTED PRIVATE KEY-----`);
- a PKCS#12 bundle is opened as ssl_openssl.c tls_ctx_load_pkcs12 does: without a password
  first (PKCS12_parse with "" tries both NULL and the empty password), then with the passphrase;
  without `ca`, the bundle's other certificates are the trust anchors.

Who unlocks: the parser (resolve.py), when `askpass FILE` gave the passphrase, to check it and
the key against the certificate and to find the bundle's CA; the engine (tls.py), when it builds
the TLS context from `Config.key_passphrase`; a runtime only asks (a terminal prompt) and puts
the answer into `key_passphrase` (`with_passphrase` checks it first).

Our words, the same on every `cryptography` release (38 says "Bad decrypt. Incorrect
password?", 50 "Incorrect password, could not decrypt key"; neither is ever shown). The library's
exception types are stable: TypeError for an encrypted key loaded without a password (so its
structure decoded up to the encryption), ValueError for a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .keys import KeyMaterialError, guarded, looks_like_pkcs12, open_pkcs12
from .model import Config, Secret

# OpenVPN reads at most USER_PASS_LEN - 1 bytes (4096 when built with PKCS#11, as Debian's is).
MAX_PASSPHRASE_BYTES = 4095
ENCRYPTED_PKCS8_BEGIN = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
ENCRYPTED_TRADITIONAL = b"Proc-Type: 4,ENCRYPTED"

WRONG_KEY = "the passphrase is wrong: it does not unlock the private key"
WRONG_BUNDLE = (
    "the passphrase is wrong: it does not unlock the PKCS#12 bundle (or the bundle is "
    "encrypted in a way this system cannot read)"
)
UNSUPPORTED_KEY = (
    "the private key is encrypted with an algorithm this system cannot read; "
    "re-encrypt it: openssl pkey -in KEY -aes256 -out NEW.key"
)


class PassphraseError(KeyMaterialError):
    """The passphrase is missing or wrong (a runtime may ask again; a file is simply wrong)."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """What a PKCS#12 bundle holds: our key, our certificate, the other certificates."""

    key: Any  # a cryptography private key
    cert: x509.Certificate
    extra: tuple[x509.Certificate, ...]


def parse_askpass(data: bytes) -> Secret:
    """The passphrase in an `askpass` file: its first line without the line end."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        raise KeyMaterialError("the askpass file's first line (the passphrase) is empty")
    if b"\x00" in first:
        raise KeyMaterialError("the askpass file's first line has a NUL byte")
    if len(first) > MAX_PASSPHRASE_BYTES:
        raise KeyMaterialError(
            f"the passphrase is longer than OpenVPN reads ({MAX_PASSPHRASE_BYTES} bytes)"
        )
    return Secret(first)


def key_is_encrypted(pem: bytes) -> bool:
    """Whether a PEM private key (as `keys.parse_private_key` keeps it) needs a passphrase."""
    return pem.lstrip().startswith(ENCRYPTED_PKCS8_BEGIN) or ENCRYPTED_TRADITIONAL in pem


def load_private_key(pem: bytes, passphrase: Secret | None) -> Any:
    """The private key, decrypted with `passphrase` when it is encrypted."""

    def load() -> Any:
        if not key_is_encrypted(pem):
            return serialization.load_pem_private_key(pem, password=None)
        try:
            return serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            pass  # it decoded up to the encryption: now the passphrase decides
        if passphrase is None:
            raise PassphraseError("the private key is encrypted and no passphrase was given")
        try:
            return serialization.load_pem_private_key(pem, password=passphrase.value)
        except UnsupportedAlgorithm:
            raise KeyMaterialError(UNSUPPORTED_KEY) from None
        except ValueError:
            raise PassphraseError(WRONG_KEY) from None

    return guarded("the private key", load)


def pkcs12_is_locked(der: bytes) -> bool:
    """Whether the bundle needs a passphrase (False when it opens with none or the empty one)."""

    def check() -> bool:
        if open_pkcs12(der, (None, b"")) is not None:
            return False
        if not looks_like_pkcs12(der):
            raise KeyMaterialError("the PKCS#12 bundle does not decode")
        return True

    return guarded("the PKCS#12 bundle", check)


def load_pkcs12(der: bytes, passphrase: Secret | None) -> Bundle:
    """The bundle's key and certificates, opened without a password or with `passphrase`."""

    def load() -> Bundle:
        extra = () if passphrase is None else (passphrase.value,)
        opened = open_pkcs12(der, (None, b"", *extra))
        if opened is None:
            if not looks_like_pkcs12(der):
                raise KeyMaterialError("the PKCS#12 bundle does not decode")
            if passphrase is None:
                raise PassphraseError(
                    "the PKCS#12 bundle is protected by a password and no passphrase was given"
                )
            raise PassphraseError(WRONG_BUNDLE)
        key, cert, others = opened
        if key is None or cert is None:
            raise KeyMaterialError("the PKCS#12 bundle needs both a private key and a certificate")
        return Bundle(key, cert, tuple(others))

    return guarded("the PKCS#12 bundle", load)


def pkcs12_ca_pem(der: bytes, passphrase: Secret | None = None) -> str | None:
    """The bundle's other certificates as PEM (OpenVPN trusts them when there is no `ca`),
    or None if it has none."""
    bundle = load_pkcs12(der, passphrase)
    if not bundle.extra:
        return None
    pem = serialization.Encoding.PEM
    return "".join(cert.public_bytes(pem).decode("ascii") for cert in bundle.extra)


def cert_matches_key(cert_pem: str, key: Secret, passphrase: Secret | None = None) -> bool:
    """Whether the first certificate's public key is the private key's.

    Raises `KeyMaterialError` when either does not decode (an EC point off the curve, a key
    type the library does not know), `PassphraseError` when the key stays locked.
    """
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER

    def theirs() -> bytes:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        return cert.public_key().public_bytes(enc, fmt)

    cert_key = guarded("the public key of the client certificate", theirs)
    private = load_private_key(key.value, passphrase)
    ours: bytes = guarded("the private key", lambda: private.public_key().public_bytes(enc, fmt))
    return cert_key == ours


def locked(config: Config) -> str | None:
    """What of the config's key material needs a passphrase (given or not), in words for a
    message ("the private key is encrypted"), or None."""
    if config.key is not None and key_is_encrypted(config.key.value):
        return "the private key is encrypted"
    if config.pkcs12 is not None and pkcs12_is_locked(config.pkcs12.value):
        return "the PKCS#12 bundle is protected by a password"
    return None


def with_passphrase(config: Config, passphrase: Secret) -> Config:
    """`config` with `passphrase` for its key material, checked the way the parser checks a
    passphrase from `askpass FILE`: it must unlock, the key must be the certificate's, and a
    bundle without `ca` must bring the CA certificates (then they become `ca`).

    Raises `PassphraseError` (wrong) or `KeyMaterialError` (anything else)."""
    key, cert = config.key, config.cert
    if key is not None and cert is not None and not cert_matches_key(cert, key, passphrase):
        raise KeyMaterialError("the private key does not belong to the client certificate")
    ca = config.ca
    if config.pkcs12 is not None:
        bundle_ca = pkcs12_ca_pem(config.pkcs12.value, passphrase)
        ca = bundle_ca if ca is None else ca
    if ca is None and not config.peer_fingerprints:
        raise KeyMaterialError(
            "no way to check the server (the PKCS#12 bundle carries no CA certificate): "
            "add 'ca' (the CA certificate) or 'peer-fingerprint'"
        )
    return replace(config, key_passphrase=passphrase, ca=ca)
