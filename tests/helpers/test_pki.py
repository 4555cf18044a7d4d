"""The test PKI itself: formats OpenVPN and OpenSSL accept, permissions, the wrong CA is wrong."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.pki import (
    ENCRYPTED_KEY_PASSPHRASE,
    STATIC_KEY_FOOTER,
    STATIC_KEY_HEADER,
    make_pki,
    static_key_text,
    write_pki,
)


def test_static_key_text_is_16_lines_of_32_hex() -> None:
    key = bytes(range(256))
    text = static_key_text(key)
    lines = text.splitlines()
    body = lines[lines.index(STATIC_KEY_HEADER) + 1 : lines.index(STATIC_KEY_FOOTER)]
    assert len(body) == 16
    assert all(len(line) == 32 for line in body)
    assert bytes.fromhex("".join(body)) == key


def test_static_key_text_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        static_key_text(b"\x00" * 128)


def test_write_pki_files_are_private(tmp_path: Path) -> None:
    files = write_pki(make_pki(), tmp_path / "pki")
    for path in vars(files).values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_chains_verify_with_openssl(tmp_path: Path) -> None:
    files = write_pki(make_pki(), tmp_path)

    def verify(ca: Path, cert: Path) -> bool:
        argv = ["openssl", "verify", "-CAfile", str(ca), str(cert)]
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0

    assert verify(files.ca, files.server_cert)
    assert verify(files.ca, files.client_cert)
    assert not verify(files.ca, files.wrong_client_cert)
    assert verify(files.wrong_ca, files.wrong_client_cert)


def test_encrypted_key_needs_the_passphrase() -> None:
    pki = make_pki()
    pem = pki.client_key_encrypted_pem.encode()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    key = serialization.load_pem_private_key(pem, password=ENCRYPTED_KEY_PASSPHRASE.encode())

    def public_der(k: object) -> bytes:
        return k.public_key().public_bytes(  # type: ignore[attr-defined,no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    assert public_der(key) == public_der(pki.client.key)


def test_tls_crypt_v2_keys_are_openvpn_armour() -> None:
    pki = make_pki()
    assert "BEGIN OpenVPN tls-crypt-v2 server key" in pki.tls_crypt_v2_server
    assert "BEGIN OpenVPN tls-crypt-v2 client key" in pki.tls_crypt_v2_client
