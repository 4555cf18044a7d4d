"""cbc.py: one direction's CBC+HMAC key, against NIST SP 800-38A and an independent composition
of `cryptography` + `hmac`, on every backend of this stack."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from miragevpn import cbc
from miragevpn.errors import AuthenticationError, DecodeError

CIPHERS = list(cbc.CBC_KEY_SIZES)
DIGESTS = ["SHA1", "SHA256", "SHA384", "SHA512"]


def keys(cipher: str, auth: str) -> tuple[bytes, bytes]:
    return bytes(range(cbc.CBC_KEY_SIZES[cipher])), bytes(range(100, 100 + cbc.DIGEST_SIZES[auth]))


def reference_seal(cipher: str, auth: str, iv: bytes, plaintext: bytes) -> bytes:
    """OpenVPN's layout built from the public APIs alone (crypto.c: openvpn_encrypt_v1)."""
    cipher_key, hmac_key = keys(cipher, auth)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).encryptor()
    body = iv + encryptor.update(padded) + encryptor.finalize()
    return hmac.digest(hmac_key, body, auth.lower()) + body


def box(cipher: str, auth: str, backend: str) -> cbc.CbcHmac:
    return cbc.make_cbc_hmac(cipher, auth, *keys(cipher, auth), backend=backend)


@pytest.mark.parametrize("backend", cbc.BACKENDS)
@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_backend_passes_the_known_answer_self_test(backend: str, cipher: str) -> None:
    # both bindings exist on Debian 12's and the newest stack: a failure here is a real one
    assert cbc.backend_available(backend, cipher)
    assert cbc.selected_backend(cipher) == cbc.PREFERENCE[0]


@pytest.mark.parametrize("backend", cbc.BACKENDS)
@pytest.mark.parametrize("auth", DIGESTS)
@pytest.mark.parametrize("cipher", CIPHERS)
def test_layout_matches_an_independent_composition(backend: str, cipher: str, auth: str) -> None:
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    k = box(cipher, auth, backend)
    for plaintext in (b"", b"\x00\x00\x00\x01", bytes(16), bytes(range(200))):
        wire = k.seal(iv, plaintext)
        assert wire == reference_seal(cipher, auth, iv, plaintext)
        assert k.open(wire) == plaintext
        assert len(wire) == cbc.DIGEST_SIZES[auth] + 16 + (len(plaintext) // 16 + 1) * 16


@pytest.mark.parametrize("backend", cbc.BACKENDS)
def test_the_hmac_covers_iv_and_ciphertext(backend: str) -> None:
    k = box("AES-256-CBC", "SHA256", backend)
    wire = k.seal(bytes(16), b"payload")
    for position in (0, 31, 32, 47, 48, len(wire) - 1):  # HMAC, IV, ciphertext
        forged = bytearray(wire)
        forged[position] ^= 1
        with pytest.raises(AuthenticationError):
            k.open(bytes(forged))
    assert k.open(wire) == b"payload"  # the context survived the refusals


@pytest.mark.parametrize("backend", cbc.BACKENDS)
def test_malformed_but_authenticated_packets_are_decode_errors(backend: str) -> None:
    cipher_key, hmac_key = keys("AES-128-CBC", "SHA1")
    k = box("AES-128-CBC", "SHA1", backend)
    with pytest.raises(DecodeError):
        k.open(bytes(20 + 16 + 15))  # shorter than HMAC + IV + one block
    ragged = bytes(16) + bytes(20)  # IV + 20 bytes: not whole blocks
    with pytest.raises(DecodeError, match="whole number of blocks"):
        k.open(hmac.digest(hmac_key, ragged, "sha1") + ragged)
    # a block whose padding is wrong (the peer's bug, since the HMAC verified)
    encryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(bytes(16))).encryptor()
    bad = bytes(16) + encryptor.update(bytes(15) + b"\x00") + encryptor.finalize()
    with pytest.raises(DecodeError, match="padding"):
        k.open(hmac.digest(hmac_key, bad, "sha1") + bad)
    assert k.open(k.seal(bytes(16), b"ok")) == b"ok"


@pytest.mark.parametrize("backend", cbc.BACKENDS)
def test_large_packets_get_their_own_buffer(backend: str) -> None:
    k = box("AES-192-CBC", "SHA512", backend)
    for size in (3000, 70_000, 100):
        data = bytes(range(256)) * (size // 256) + b"x"
        assert k.open(k.seal(bytes(range(16)), data)) == data


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported CBC cipher"):
        cbc.make_cbc_hmac("BF-CBC", "SHA1", bytes(16), bytes(20))
    with pytest.raises(ValueError, match="32-byte key"):
        cbc.make_cbc_hmac("AES-256-CBC", "SHA1", bytes(16), bytes(20))
    with pytest.raises(ValueError, match="20-byte key"):
        cbc.make_cbc_hmac("AES-256-CBC", "SHA1", bytes(32), bytes(32))
    with pytest.raises(ValueError, match="unknown CBC backend"):
        cbc.make_cbc_hmac("AES-256-CBC", "SHA1", bytes(32), bytes(20), backend="nope")
    with pytest.raises(ValueError, match="IV"):
        box("AES-128-CBC", "SHA1", "ctypes").seal(bytes(8), b"x")


@settings(max_examples=60, deadline=None)
@given(
    cipher=st.sampled_from(CIPHERS),
    auth=st.sampled_from(DIGESTS),
    iv=st.binary(min_size=16, max_size=16),
    plaintext=st.binary(max_size=600),
)
def test_backends_agree_and_round_trip(cipher: str, auth: str, iv: bytes, plaintext: bytes) -> None:
    sealed = {b: box(cipher, auth, b).seal(iv, plaintext) for b in cbc.BACKENDS}
    assert len(set(sealed.values())) == 1
    for backend in cbc.BACKENDS:
        assert box(cipher, auth, backend).open(sealed[backend]) == plaintext
