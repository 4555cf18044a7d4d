"""Data-channel key material: OpenVPN's TLS 1.0 PRF expansion, the EKM label, direction slicing.

Two ways to the 256-byte `key2` (reference §5):
- the legacy PRF (`prf_key_expansion`), from the key-method-2 randoms and the session ids;
- TLS-EKM: `tls.export_keying_material(EKM_LABEL, EKM_LENGTH)` with no context (done by the
  TLS layer; this module only names the label and length).

`key2` is laid out as two `struct key { cipher[64]; hmac[64]; }` (crypto.h). The client is
KEY_DIRECTION_NORMAL for the data channel: it encrypts with keys[0], decrypts with keys[1]
(crypto.c: key_direction_state_init; ssl.c: init_key_contexts).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "AEAD_KEY_SIZES",
    "EKM_LABEL",
    "EKM_LENGTH",
    "KEY2_LENGTH",
    "CbcKeys",
    "DataChannelKeys",
    "client_cbc_keys",
    "client_data_keys",
    "prf_key_expansion",
    "split_cbc_keys",
    "tls1_prf",
]

KEY2_LENGTH = 256  # crypto.h: sizeof(struct key2.keys) = 2 * (64 + 64)
EKM_LABEL = "EXPORTER-OpenVPN-datakeys"  # ssl.c: EXPORT_KEY_DATA_LABEL
EKM_LENGTH = KEY2_LENGTH
MASTER_SECRET_LENGTH = 48  # ssl_common.h: key_source.pre_master
KEY_EXPANSION_ID = b"OpenVPN key expansion"  # ssl.c: KEY_EXPANSION_ID (no trailing space)
MASTER_SECRET_ID = b"OpenVPN master secret"  # ssl.c: generate_key_expansion_openvpn_prf
AEAD_IMPLICIT_IV_LENGTH = 8  # crypto.c: OPENVPN_AEAD_MIN_IV_LEN - packet id length (12 - 4)

# Cipher key sizes in bytes (OpenSSL EVP_CIPHER_key_length) of the AEAD data ciphers.
AEAD_KEY_SIZES: dict[str, int] = {
    "AES-128-GCM": 16,
    "AES-192-GCM": 24,
    "AES-256-GCM": 32,
    "CHACHA20-POLY1305": 32,
}


def _p_hash(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 §5: P_hash(secret, seed) = HMAC(A1 + seed) + HMAC(A2 + seed) + ..."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return bytes(out[:length])


def tls1_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.0/1.1 PRF (RFC 2246 §5; OpenVPN crypto backend `ssl_tls1_PRF`).

    P_MD5 over the first half of the secret XOR P_SHA1 over the second half; with an odd
    length the halves share the middle byte. The label is part of `seed`."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], seed, length)
    sha1 = _p_hash("sha1", secret[len(secret) - half :], seed, length)
    return (int.from_bytes(md5, "big") ^ int.from_bytes(sha1, "big")).to_bytes(length, "big")


def prf_key_expansion(
    *,
    client_pre_master: bytes,
    client_random1: bytes,
    client_random2: bytes,
    server_random1: bytes,
    server_random2: bytes,
    client_session_id: bytes,
    server_session_id: bytes,
) -> bytes:
    """The 256-byte key2 of the legacy OpenVPN PRF (reference §5.2; ssl.c:
    generate_key_expansion_openvpn_prf)."""
    if len(client_pre_master) != MASTER_SECRET_LENGTH:
        raise ValueError("pre_master must be 48 bytes")
    for name, value in (
        ("client_random1", client_random1),
        ("client_random2", client_random2),
        ("server_random1", server_random1),
        ("server_random2", server_random2),
    ):
        if len(value) != 32:
            raise ValueError(f"{name} must be 32 bytes")
    if len(client_session_id) != 8 or len(server_session_id) != 8:
        raise ValueError("session ids must be 8 bytes")
    master = tls1_prf(
        client_pre_master,
        MASTER_SECRET_ID + client_random1 + server_random1,
        MASTER_SECRET_LENGTH,
    )
    return tls1_prf(
        master,
        KEY_EXPANSION_ID + client_random2 + server_random2 + client_session_id + server_session_id,
        KEY2_LENGTH,
    )


@dataclass(frozen=True, slots=True)
class DataChannelKeys:
    """The AEAD keys of one key state, split by direction (reference §5.1)."""

    my_cipher_key: bytes
    my_implicit_iv: bytes
    their_cipher_key: bytes
    their_implicit_iv: bytes

    def __repr__(self) -> str:
        return "DataChannelKeys(<redacted>)"


def client_data_keys(key2: bytes, cipher: str) -> DataChannelKeys:
    """Slice key2 for the client (NORMAL): encrypt with keys[0], decrypt with keys[1].

    cipher key = first K bytes of the cipher slot; implicit IV = first 8 bytes of the hmac
    slot."""
    if len(key2) != KEY2_LENGTH:
        raise ValueError("key2 must be 256 bytes")
    size = AEAD_KEY_SIZES.get(cipher.upper())
    if size is None:
        raise ConfigError(f"unsupported data cipher {cipher!r}", directive="cipher")
    return DataChannelKeys(
        my_cipher_key=key2[0:size],
        my_implicit_iv=key2[64 : 64 + AEAD_IMPLICIT_IV_LENGTH],
        their_cipher_key=key2[128 : 128 + size],
        their_implicit_iv=key2[192 : 192 + AEAD_IMPLICIT_IV_LENGTH],
    )


@dataclass(frozen=True, slots=True)
class CbcKeys:
    """The CBC+HMAC keys of one key state, split by direction (reference §5.1)."""

    my_cipher_key: bytes
    my_hmac_key: bytes
    their_cipher_key: bytes
    their_hmac_key: bytes

    def __repr__(self) -> str:
        return "CbcKeys(<redacted>)"


def split_cbc_keys(
    key2: bytes, *, key_size: int, hmac_size: int, my_slot: int, their_slot: int
) -> CbcKeys:
    """CBC+HMAC keys from two `struct key { cipher[64]; hmac[64]; }` slots of key2 (or of a
    static key file): the cipher key is the first K bytes of a slot's cipher half, the HMAC key
    the first N bytes (N = digest size) of its hmac half (crypto.c: init_key_ctx)."""
    if len(key2) != KEY2_LENGTH:
        raise ValueError("key2 must be 256 bytes")
    if not 0 < key_size <= 64 or not 0 < hmac_size <= 64:
        raise ValueError("key sizes must be 1..64 bytes")
    my, their = 128 * my_slot, 128 * their_slot
    return CbcKeys(
        my_cipher_key=key2[my : my + key_size],
        my_hmac_key=key2[my + 64 : my + 64 + hmac_size],
        their_cipher_key=key2[their : their + key_size],
        their_hmac_key=key2[their + 64 : their + 64 + hmac_size],
    )


def client_cbc_keys(key2: bytes, *, key_size: int, hmac_size: int) -> CbcKeys:
    """Slice a TLS-mode key2 for the client (NORMAL): encrypt with keys[0], decrypt with
    keys[1]."""
    return split_cbc_keys(key2, key_size=key_size, hmac_size=hmac_size, my_slot=0, their_slot=1)
