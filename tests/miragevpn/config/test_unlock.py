"""Key material behind a passphrase (config/unlock.py): encrypted PEM keys in both forms,
protected PKCS#12 bundles (our own and openssl's, modern and legacy ciphers), the askpass file,
and our words for a missing or wrong passphrase, the same on every cryptography release (this
file runs on cryptography 38 in .venv and the newest in .venv-newest)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from miragevpn.config.keys import KeyMaterialError
from miragevpn.config.model import Config, Secret
from miragevpn.config.unlock import (
    WRONG_BUNDLE,
    WRONG_KEY,
    PassphraseError,
    cert_matches_key,
    key_is_encrypted,
    load_pkcs12,
    load_private_key,
    locked,
    parse_askpass,
    pkcs12_ca_pem,
    pkcs12_is_locked,
    with_passphrase,
)
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, Pki, pkcs12_bundle

RIGHT = Secret(ENCRYPTED_KEY_PASSPHRASE.encode())
WRONG = Secret(b"Tr0ub4dor&3")


def _public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _openssl(tmp_path: Path, *argv: str) -> bytes:
    """Run the openssl command line (the formats real tools write); its output file's bytes."""
    out = tmp_path / "out"
    subprocess.run(
        ["openssl", *argv, "-out", str(out)], check=True, capture_output=True, timeout=30
    )
    return out.read_bytes()


@pytest.fixture
def openssl_keys(pki: Pki, tmp_path: Path) -> dict[str, bytes]:
    """The client key as openssl writes it encrypted: traditional AES-256 and 3DES, PKCS#8
    PBES2 (the default) and PBES1 (PBE-SHA1-3DES)."""
    plain = tmp_path / "client.key"
    plain.write_text(pki.client.key_pem)
    pw = f"pass:{ENCRYPTED_KEY_PASSPHRASE}"
    return {
        "traditional-aes256": _openssl(
            tmp_path, "ec", "-in", str(plain), "-aes256", "-passout", pw
        ),
        "traditional-3des": _openssl(tmp_path, "ec", "-in", str(plain), "-des3", "-passout", pw),
        "pkcs8-pbes2": _openssl(tmp_path, "pkcs8", "-topk8", "-in", str(plain), "-passout", pw),
        "pkcs8-pbes1": _openssl(
            tmp_path, "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(plain), "-passout", pw
        ),
    }


def test_askpass_file_is_its_first_line_without_the_line_end() -> None:
    assert parse_askpass(b"pass phrase  \r\nsecond line\n").value == b"pass phrase  "
    assert parse_askpass(b"no newline").value == b"no newline"
    for bad, words in (
        (b"\nsecond\n", "first line (the passphrase) is empty"),
        (b"", "first line (the passphrase) is empty"),
        (b"a\x00b\n", "NUL"),
        (b"x" * 4096 + b"\n", "longer than OpenVPN reads (4095 bytes)"),
    ):
        with pytest.raises(KeyMaterialError) as info:
            parse_askpass(bad)
        assert words in str(info.value)
    assert len(parse_askpass(b"x" * 4095).value) == 4095


def test_our_encrypted_keys_open_with_the_passphrase_only(pki: Pki) -> None:
    for pem in (pki.client_key_encrypted_pem, pki.client_key_encrypted_traditional_pem):
        data = pem.encode()
        assert key_is_encrypted(data)
        assert _public(load_private_key(data, RIGHT)) == _public(pki.client.key)
        with pytest.raises(PassphraseError) as info:
            load_private_key(data, WRONG)
        assert str(info.value) == WRONG_KEY
        with pytest.raises(PassphraseError) as info:
            load_private_key(data, None)
        assert str(info.value) == "the private key is encrypted and no passphrase was given"
    assert not key_is_encrypted(pki.client.key_pem.encode())
    # a passphrase given for a plain key is not an error (OpenVPN does not ask then)
    assert _public(load_private_key(pki.client.key_pem.encode(), RIGHT)) == _public(pki.client.key)


def test_keys_encrypted_by_openssl_open_too(pki: Pki, openssl_keys: dict[str, bytes]) -> None:
    assert openssl_keys["traditional-aes256"].startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    assert b"DEK-Info: DES-EDE3-CBC," in openssl_keys["traditional-3des"]
    for name, pem in openssl_keys.items():
        assert key_is_encrypted(pem), name
        assert _public(load_private_key(pem, RIGHT)) == _public(pki.client.key), name
        with pytest.raises(PassphraseError) as info:
            load_private_key(pem, WRONG)
        assert str(info.value) == WRONG_KEY, name


def test_a_damaged_encrypted_key_does_not_decode(pki: Pki) -> None:
    lines = pki.client_key_encrypted_pem.splitlines()
    broken = "\n".join([lines[0], "AAAA" + lines[1][4:], *lines[2:]]) + "\n"
    with pytest.raises(KeyMaterialError) as info:
        load_private_key(broken.encode(), RIGHT)
    assert not isinstance(info.value, PassphraseError) or str(info.value) == WRONG_KEY
    truncated = "\n".join([lines[0], lines[1][:10], lines[-1]]) + "\n"
    with pytest.raises(KeyMaterialError) as info:
        load_private_key(truncated.encode(), RIGHT)
    assert str(info.value) == "the private key does not decode"


def test_cert_matches_an_encrypted_key_once_unlocked(pki: Pki) -> None:
    key = Secret(pki.client_key_encrypted_pem.encode())
    assert cert_matches_key(pki.client.cert_pem, key, RIGHT)
    assert not cert_matches_key(pki.server.cert_pem, key, RIGHT)
    with pytest.raises(PassphraseError):
        cert_matches_key(pki.client.cert_pem, key, WRONG)


def test_protected_bundle_opens_with_the_passphrase_only(pki: Pki) -> None:
    der = pki.client_p12_protected
    assert pkcs12_is_locked(der)
    bundle = load_pkcs12(der, RIGHT)
    assert bundle.cert == pki.client.cert and bundle.extra == (pki.ca.cert,)
    assert _public(bundle.key) == _public(pki.client.key)
    assert pkcs12_ca_pem(der, RIGHT) == pki.ca.cert_pem
    with pytest.raises(PassphraseError) as info:
        load_pkcs12(der, WRONG)
    assert str(info.value) == WRONG_BUNDLE
    with pytest.raises(PassphraseError) as info:
        load_pkcs12(der, None)
    assert "protected by a password and no passphrase was given" in str(info.value)


def test_unprotected_bundles_open_without_a_passphrase(pki: Pki) -> None:
    assert not pkcs12_is_locked(pki.client_p12)
    assert load_pkcs12(pki.client_p12, None).extra == (pki.ca.cert,)
    assert load_pkcs12(pki.client_p12, WRONG).cert == pki.client.cert  # as OpenVPN: "" first
    assert pkcs12_ca_pem(pkcs12_bundle(pki.client, [])) is None


def test_openssl_bundles_modern_and_legacy_open(pki: Pki, tmp_path: Path) -> None:
    """pfSense and easy-rsa export with the openssl command line; older ones with RC2-40 and
    3DES (`-legacy` today). Both stacks read both (cryptography 38 on Debian's OpenSSL 3.0
    too)."""
    (tmp_path / "c.crt").write_text(pki.client.cert_pem)
    (tmp_path / "c.key").write_text(pki.client.key_pem)
    (tmp_path / "ca.crt").write_text(pki.ca.cert_pem)
    common = [
        "pkcs12",
        "-export",
        "-in",
        str(tmp_path / "c.crt"),
        "-inkey",
        str(tmp_path / "c.key"),
    ]
    common += ["-certfile", str(tmp_path / "ca.crt")]
    pw = f"pass:{ENCRYPTED_KEY_PASSPHRASE}"
    for extra in ([], ["-legacy"]):
        der = _openssl(tmp_path, *common, *extra, "-passout", pw)
        assert pkcs12_is_locked(der)
        assert load_pkcs12(der, RIGHT).extra == (pki.ca.cert,)
        with pytest.raises(PassphraseError) as info:
            load_pkcs12(der, WRONG)
        assert str(info.value) == WRONG_BUNDLE
    empty = _openssl(tmp_path, *common, "-passout", "pass:")
    assert not pkcs12_is_locked(empty)  # the empty password is tried first, as OpenVPN does


def test_broken_bundles_do_not_decode_whatever_the_passphrase(pki: Pki) -> None:
    der = pki.client_p12_protected
    # (bytes after the bundle are tolerated, by OpenSSL's d2i_PKCS12 in OpenVPN too)
    for broken in (der[:-40], b"\x30\x03\x02\x01\x03", b"", b"\x04\x00"):
        for passphrase in (None, RIGHT):
            with pytest.raises(KeyMaterialError) as info:
                load_pkcs12(broken, passphrase)
            assert str(info.value) == "the PKCS#12 bundle does not decode"


def test_what_a_config_needs(pki: Pki) -> None:
    plain = Config(cert=pki.client.cert_pem, key=Secret(pki.client.key_pem.encode()))
    assert locked(plain) is None
    key = Config(cert=pki.client.cert_pem, key=Secret(pki.client_key_encrypted_pem.encode()))
    assert locked(key) == "the private key is encrypted"
    bundle = Config(pkcs12=Secret(pki.client_p12_protected))
    assert locked(bundle) == "the PKCS#12 bundle is protected by a password"
    assert with_passphrase(bundle, RIGHT).key_passphrase == RIGHT


def test_with_passphrase_checks_and_brings_the_bundles_ca(pki: Pki) -> None:
    key = Config(
        ca=pki.ca.cert_pem,
        cert=pki.client.cert_pem,
        key=Secret(pki.client_key_encrypted_pem.encode()),
    )
    assert with_passphrase(key, RIGHT).key_passphrase == RIGHT
    with pytest.raises(PassphraseError):
        with_passphrase(key, WRONG)
    with pytest.raises(KeyMaterialError) as info:
        with_passphrase(Config(ca=pki.ca.cert_pem, cert=pki.server.cert_pem, key=key.key), RIGHT)
    assert str(info.value) == "the private key does not belong to the client certificate"

    bundle = Config(pkcs12=Secret(pki.client_p12_protected))
    assert with_passphrase(bundle, RIGHT).ca == pki.ca.cert_pem  # no `ca`: the bundle's
    with pytest.raises(PassphraseError):
        with_passphrase(bundle, WRONG)
    own_ca = Config(ca=pki.wrong_ca.cert_pem, pkcs12=Secret(pki.client_p12_protected))
    assert with_passphrase(own_ca, RIGHT).ca == pki.wrong_ca.cert_pem  # `ca` given: kept
    lonely = Config(pkcs12=Secret(pkcs12_bundle(pki.client, [], ENCRYPTED_KEY_PASSPHRASE)))
    with pytest.raises(KeyMaterialError) as info:
        with_passphrase(lonely, RIGHT)
    assert "the PKCS#12 bundle carries no CA certificate" in str(info.value)


def test_the_passphrase_never_shows(pki: Pki) -> None:
    config = Config(pkcs12=Secret(pki.client_p12_protected), key_passphrase=RIGHT)
    assert ENCRYPTED_KEY_PASSPHRASE not in repr(config)
    assert ENCRYPTED_KEY_PASSPHRASE not in str(config.key_passphrase)
