"""kdf.py: the TLS 1.0 PRF, OpenVPN's key expansion, key2 slicing."""

from __future__ import annotations

import hmac

import pytest

from miragevpn.errors import ConfigError
from miragevpn.kdf import (
    EKM_LABEL,
    EKM_LENGTH,
    client_data_keys,
    prf_key_expansion,
    tls1_prf,
)

LOREM = (
    b"Lorem ipsum dolor sit amet, consectetur adipisici elit, sed eiusmod tempor incidunt ut "
    b"labore et dolore magna aliqua."
)


def test_tls1_prf_openvpn_vector() -> None:
    # tests/unit_tests/openvpn/test_crypto.c: crypto_test_tls_prf (reference §11.1);
    # the 117-byte secret has an odd length, so the halves share the middle byte.
    seed = b"Quis aute iure reprehenderit in voluptate velit esse cillum dolore"
    assert tls1_prf(LOREM, seed, 32) == bytes.fromhex(
        "d98c8518c85e946927916acfc2d592fbb1567e4b4b1459e6a904ac2ddab72d67"
    )


def test_tls1_prf_prefix_property() -> None:
    secret, seed = b"s" * 48, b"seed"
    assert tls1_prf(secret, seed, 300)[:37] == tls1_prf(secret, seed, 37)


def test_openvpn_hmac_vector() -> None:
    # test_crypto.c: crypto_test_hmac (reference §11.1): the digest our tls-auth relies on
    key = bytes.fromhex("0b") + bytes(19)
    assert hmac.digest(key, LOREM + LOREM, "sha1") == bytes.fromhex(
        "58ea5af04294e917ed84b9f0833023ae8ba77eb8"
    )


def test_key_expansion_labels_and_seed_order() -> None:
    """Derived by hand from reference §5.2: master from pre_master and the random1s, key2
    from master, the random2s and both session ids."""
    pre, cr1, cr2, sr1, sr2 = b"P" * 48, b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 32
    csid, ssid = b"CLIENTID", b"SERVERID"
    master = tls1_prf(pre, b"OpenVPN master secret" + cr1 + sr1, 48)
    expected = tls1_prf(master, b"OpenVPN key expansion" + cr2 + sr2 + csid + ssid, 256)
    got = prf_key_expansion(
        client_pre_master=pre,
        client_random1=cr1,
        client_random2=cr2,
        server_random1=sr1,
        server_random2=sr2,
        client_session_id=csid,
        server_session_id=ssid,
    )
    assert got == expected and len(got) == 256
    swapped = prf_key_expansion(
        client_pre_master=pre,
        client_random1=cr1,
        client_random2=cr2,
        server_random1=sr1,
        server_random2=sr2,
        client_session_id=ssid,
        server_session_id=csid,
    )
    assert swapped != got


def test_key_expansion_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        prf_key_expansion(
            client_pre_master=b"x" * 47,
            client_random1=b"a" * 32,
            client_random2=b"b" * 32,
            server_random1=b"c" * 32,
            server_random2=b"d" * 32,
            client_session_id=b"12345678",
            server_session_id=b"12345678",
        )


def test_ekm_constants() -> None:
    assert EKM_LABEL == "EXPORTER-OpenVPN-datakeys" and len(EKM_LABEL) == 25
    assert EKM_LENGTH == 256


@pytest.mark.parametrize(
    ("cipher", "size"),
    [("AES-128-GCM", 16), ("aes-256-gcm", 32), ("CHACHA20-POLY1305", 32), ("AES-192-GCM", 24)],
)
def test_client_slices(cipher: str, size: int) -> None:
    key2 = bytes(range(256))
    keys = client_data_keys(key2, cipher)
    assert keys.my_cipher_key == key2[:size]
    assert keys.my_implicit_iv == key2[64:72]
    assert keys.their_cipher_key == key2[128 : 128 + size]
    assert keys.their_implicit_iv == key2[192:200]
    assert "redacted" in repr(keys)


def test_client_slices_reject() -> None:
    with pytest.raises(ConfigError):
        client_data_keys(bytes(256), "BF-CBC")
    with pytest.raises(ValueError):
        client_data_keys(bytes(255), "AES-256-GCM")
