"""aead.py: every backend against published vectors, against each other, and under tampering."""

from __future__ import annotations

import gc
from collections.abc import Callable

import cryptography
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miragevpn import aead, libcrypto
from miragevpn.aead import (
    BACKENDS,
    NONCE_LENGTH,
    TAG_LENGTH,
    AeadBackendError,
    backend_available,
    make_aead,
    selected_backend,
)
from miragevpn.errors import AuthenticationError
from miragevpn.kdf import AEAD_KEY_SIZES

CIPHERS = tuple(AEAD_KEY_SIZES)
CASES = [(b, c) for b in BACKENDS for c in CIPHERS if backend_available(b, c)]
NATIVE = [b for b in BACKENDS if b != "cryptography"]

GCM_P = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_A = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_IV = bytes.fromhex("cafebabefacedbaddecaf888")

# (cipher, key, nonce, aad, plaintext, tag, ciphertext)
VECTORS = [
    # McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)" (NIST submission), test case 1:
    # zero key, zero IV, no data, no AAD
    pytest.param(
        "AES-128-GCM",
        bytes(16),
        bytes(12),
        b"",
        b"",
        bytes.fromhex("58e2fccefa7e3061367f1d57a4e7455a"),
        b"",
        id="gcm-tc1-aes128-empty",
    ),
    # same document, test case 4 (AES-128, 60-byte P, 20-byte AAD)
    pytest.param(
        "AES-128-GCM",
        bytes.fromhex("feffe9928665731c6d6a8f9467308308"),
        GCM_IV,
        GCM_A,
        GCM_P,
        bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47"),
        bytes.fromhex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
        ),
        id="gcm-tc4-aes128",
    ),
    # same document, test case 10 (AES-192)
    pytest.param(
        "AES-192-GCM",
        bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c"),
        GCM_IV,
        GCM_A,
        GCM_P,
        bytes.fromhex("2519498e80f1478f37ba55bd6d27618c"),
        bytes.fromhex(
            "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c"
            "7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710"
        ),
        id="gcm-tc10-aes192",
    ),
    # same document, test case 13 (AES-256, zero key, no data)
    pytest.param(
        "AES-256-GCM",
        bytes(32),
        bytes(12),
        b"",
        b"",
        bytes.fromhex("530f8afbc74536b9a963b4f1c4cb738b"),
        b"",
        id="gcm-tc13-aes256-empty",
    ),
    # same document, test case 16 (AES-256)
    pytest.param(
        "AES-256-GCM",
        bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
        GCM_IV,
        GCM_A,
        GCM_P,
        bytes.fromhex("76fc6ece0f4e1768cddf8853bb2d551b"),
        bytes.fromhex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        ),
        id="gcm-tc16-aes256",
    ),
    # Reference §11.5 (OpenVPN tests/unit_tests/openvpn/test_ssl.c,
    # test_data_channel_known_vectors_shortpktid): tag and ciphertext[10:16] = a82e6b1706d9 are
    # OpenVPN's; the rest of the ciphertext as cryptography's AESGCM computes it.
    pytest.param(
        "AES-256-GCM",
        bytes.fromhex("616361676163616f3838383838383838515351575153515f72726f7874787073"),
        bytes.fromhex("00000001212321272123212f"),
        bytes.fromhex("0700001700000001"),
        b"The quick little fox jumps over the bureaucratic hurdles",
        bytes.fromhex("1fdd908f0e9dc25e79d832020d58e73f"),
        bytes.fromhex(
            "2262f977d6bb2118fa0ea82e6b1706d949aefcb5efcbbacd5c09a9ab45f4d391"
            "d3f68794cb0b82c3d33389b61622b3281598e2ff6d5cc38b"
        ),
        id="openvpn-11.5-aes256",
    ),
    # RFC 8439 §2.8.2
    pytest.param(
        "CHACHA20-POLY1305",
        bytes(range(0x80, 0xA0)),
        bytes.fromhex("070000004041424344454647"),
        bytes.fromhex("50515253c0c1c2c3c4c5c6c7"),
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it.",
        bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691"),
        bytes.fromhex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
            "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
            "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
            "3ff4def08e4b7a9de576d26586cec64b6116"
        ),
        id="rfc8439-2.8.2-chacha20poly1305",
    ),
]


def backends_for(cipher: str) -> list[str]:
    return [b for b in aead.PREFERENCE if backend_available(b, cipher)]


def test_the_fallback_is_always_there() -> None:
    assert all(backend_available("cryptography", c) for c in CIPHERS)


def test_selected_backend_is_the_first_that_passes() -> None:
    for cipher in CIPHERS:
        assert selected_backend(cipher) == backends_for(cipher)[0]
        assert make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher])).backend == selected_backend(cipher)


CRYPTOGRAPHY_MAJOR = int(cryptography.__version__.split(".")[0])


def test_the_fastest_path_is_in_use_on_every_stack() -> None:
    """No skip anywhere: each stack ends up on the path measured fastest for its release.

    Before cryptography 42 (Debian 12 ships 38) its cffi binding has the EVP functions and is
    the fastest; in 42-44 it lacks them and the system libcrypto.so.3 through ctypes carries
    every key (Debian 12/13 and Fedora 41/42 all have OpenSSL 3); from 45 the public API is
    faster than either. A failure here means a fallback silently became the only path (see
    bench/datachannel_micro.py for the cost of each)."""
    cffi_has_evp = libcrypto.load_cffi() is not None
    if CRYPTOGRAPHY_MAJOR < 42:
        assert cffi_has_evp, "cryptography < 42 should still expose the EVP functions"
    native = "cffi" if cffi_has_evp else "ctypes"
    expected = "cryptography" if CRYPTOGRAPHY_MAJOR >= 45 else native
    assert {selected_backend(c) for c in CIPHERS} == {expected}
    assert all(backend_available("ctypes", c) for c in CIPHERS), "libcrypto.so.3 unusable"


@pytest.mark.parametrize(
    ("version", "first"),
    [("38.0.4", "cffi"), ("41.0.7", "cffi"), ("44.0.3", "cffi"), ("45.0.0", "cryptography")],
)
def test_preference_follows_the_cryptography_release(version: str, first: str) -> None:
    order = aead._preference(version)
    assert order[0] == first
    assert sorted(order) == sorted(BACKENDS)


def test_every_native_backend_this_stack_has_is_exercised() -> None:
    """The parametrised tests skip unavailable backends; this says which ones must not be."""
    available = {b for b in BACKENDS if all(backend_available(b, c) for c in CIPHERS)}
    must = {"ctypes", "cryptography"} | ({"cffi"} if CRYPTOGRAPHY_MAJOR < 42 else set())
    assert must <= available


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cipher", "key", "nonce", "aad", "plain", "tag", "ct"), VECTORS)
def test_known_answers(
    backend: str,
    cipher: str,
    key: bytes,
    nonce: bytes,
    aad: bytes,
    plain: bytes,
    tag: bytes,
    ct: bytes,
) -> None:
    if not backend_available(backend, cipher):
        pytest.skip(f"{backend} unavailable here")
    box = make_aead(cipher, key, backend=backend)
    assert box.backend == backend
    for _ in range(3):  # the same answer on a reused context
        assert box.seal(nonce, aad, plain) == tag + ct
        assert box.open(nonce, aad, tag, ct) == plain


@pytest.mark.parametrize(("backend", "cipher"), CASES)
@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    nonce=st.binary(min_size=NONCE_LENGTH, max_size=NONCE_LENGTH),
    aad=st.binary(max_size=40),
    plain=st.binary(max_size=3000),
)
def test_every_backend_agrees_with_the_fallback(
    backend: str, cipher: str, data: st.DataObject, nonce: bytes, aad: bytes, plain: bytes
) -> None:
    size = AEAD_KEY_SIZES[cipher]
    key = data.draw(st.binary(min_size=size, max_size=size), label="key")
    reference = make_aead(cipher, key, backend="cryptography")
    box = make_aead(cipher, key, backend=backend)
    sealed = box.seal(nonce, aad, plain)
    assert sealed == reference.seal(nonce, aad, plain)
    assert len(sealed) == TAG_LENGTH + len(plain)
    tag, ct = sealed[:TAG_LENGTH], sealed[TAG_LENGTH:]
    assert box.open(nonce, aad, tag, ct) == plain
    assert reference.open(nonce, aad, tag, ct) == plain


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


TAMPERS: dict[str, Callable[[bytes, bytes, bytes, bytes], tuple[bytes, bytes, bytes, bytes]]] = {
    "tag": lambda n, a, t, c: (n, a, _flip(t, 15), c),
    "ciphertext": lambda n, a, t, c: (n, a, t, _flip(c, len(c) - 1)),
    "aad": lambda n, a, t, c: (n, _flip(a, 3), t, c),
    "nonce": lambda n, a, t, c: (_flip(n, 11), a, t, c),
    "aad-dropped": lambda n, a, t, c: (n, b"", t, c),
    "ciphertext-truncated": lambda n, a, t, c: (n, a, t, c[:-1]),
    "ciphertext-extended": lambda n, a, t, c: (n, a, t, c + b"\x00"),
}


@pytest.mark.parametrize(("backend", "cipher"), CASES)
@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampering_is_an_authentication_error(backend: str, cipher: str, tamper: str) -> None:
    box = make_aead(cipher, bytes(range(AEAD_KEY_SIZES[cipher])), backend=backend)
    nonce, aad, plain = bytes(range(12)), b"\x48\x00\x00\x07\x00\x00\x00\x01", b"\x45" * 100
    sealed = box.seal(nonce, aad, plain)
    args = TAMPERS[tamper](nonce, aad, sealed[:TAG_LENGTH], sealed[TAG_LENGTH:])
    with pytest.raises(AuthenticationError):
        box.open(*args)
    assert box.open(nonce, aad, sealed[:TAG_LENGTH], sealed[TAG_LENGTH:]) == plain


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_bad_lengths(backend: str, cipher: str) -> None:
    box = make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher]), backend=backend)
    sealed = box.seal(bytes(12), b"", b"x")
    for nonce in (b"", bytes(8), bytes(11), bytes(13)):
        with pytest.raises(ValueError):
            box.seal(nonce, b"", b"x")
        with pytest.raises(ValueError):
            box.open(nonce, b"", sealed[:TAG_LENGTH], sealed[TAG_LENGTH:])
    for tag in (b"", sealed[:15], sealed[:TAG_LENGTH] + b"\x00"):
        with pytest.raises(AuthenticationError):
            box.open(bytes(12), b"", tag, sealed[TAG_LENGTH:])
    assert box.open(bytes(12), b"", sealed[:TAG_LENGTH], sealed[TAG_LENGTH:]) == b"x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_keys_and_names(backend: str) -> None:
    with pytest.raises(ValueError):
        make_aead("AES-256-GCM", bytes(16), backend=backend)
    with pytest.raises(ValueError):
        make_aead("AES-256-CBC", bytes(32), backend=backend)
    with pytest.raises(ValueError):
        make_aead("AES-256-GCM", bytes(32), backend="openssl-cli")


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_data_length_limit_is_checked_before_any_native_call(
    backend: str, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher]), backend=backend)
    monkeypatch.setattr(aead, "MAX_DATA_LENGTH", 100)
    with pytest.raises(ValueError):
        box.seal(bytes(12), b"", bytes(101))
    with pytest.raises(ValueError):
        box.seal(bytes(12), bytes(101), b"")
    with pytest.raises(ValueError):
        box.open(bytes(12), b"", bytes(16), bytes(101))
    assert len(box.seal(bytes(12), bytes(100), bytes(100))) == 116


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_empty_plaintext(backend: str, cipher: str) -> None:
    box = make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher]), backend=backend)
    reference = make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher]), backend="cryptography")
    for aad in (b"", b"\x01\x02\x03\x04"):
        sealed = box.seal(bytes(12), aad, b"")
        assert sealed == reference.seal(bytes(12), aad, b"")
        assert len(sealed) == TAG_LENGTH
        assert box.open(bytes(12), aad, sealed, b"") == b""
        with pytest.raises(AuthenticationError):
            box.open(bytes(12), aad + b"!", sealed, b"")


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_large_plaintexts_and_back_to_small(backend: str, cipher: str) -> None:
    """Past the first buffer (grown and kept), past the kept size (one-off), then small again."""
    key = bytes(range(AEAD_KEY_SIZES[cipher]))
    box = make_aead(cipher, key, backend=backend)
    reference = make_aead(cipher, key, backend="cryptography")
    for size in (1400, 2049, 40_000, 4 << 20, 100, 70_000, 64):
        plain = bytes(i % 251 for i in range(size)) if size < 100_000 else b"\xa5" * size
        nonce = size.to_bytes(12, "big")
        sealed = box.seal(nonce, b"aad", plain)
        assert sealed == reference.seal(nonce, b"aad", plain)
        assert box.open(nonce, b"aad", sealed[:TAG_LENGTH], sealed[TAG_LENGTH:]) == plain


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_many_packets_interleaved_with_forgeries(backend: str, cipher: str) -> None:
    """No state leaks from one packet (or a refused forgery) into the next."""
    size = AEAD_KEY_SIZES[cipher]
    sender = make_aead(cipher, bytes([1]) * size, backend=backend)
    receiver = make_aead(cipher, bytes([1]) * size, backend=backend)
    reference = make_aead(cipher, bytes([1]) * size, backend="cryptography")
    iv = bytes(range(8))
    for i in range(1, 600):
        nonce = i.to_bytes(4, "big") + iv
        aad = b"\x48\x00\x00\x07" + i.to_bytes(4, "big")
        plain = bytes([i & 0xFF]) * (i * 7 % 1500)
        sealed = sender.seal(nonce, aad, plain)
        if i % 50 == 0:
            assert sealed == reference.seal(nonce, aad, plain)
        tag, ct = sealed[:TAG_LENGTH], sealed[TAG_LENGTH:]
        if i % 3 == 0:
            with pytest.raises(AuthenticationError):
                receiver.open(nonce, aad, _flip(tag, i % 16), ct)
        if i % 5 == 0 and ct:
            with pytest.raises(AuthenticationError):
                receiver.open(nonce, aad, tag, _flip(ct, i % len(ct)))
        if i % 7 == 0:  # a half-used decrypt: the wrong nonce
            with pytest.raises(AuthenticationError):
                receiver.open(bytes(12), aad, tag, ct)
        assert receiver.open(nonce, aad, tag, ct) == plain


@pytest.mark.parametrize(("backend", "cipher"), CASES)
def test_seal_and_open_on_one_key_object(backend: str, cipher: str) -> None:
    """Both directions live on one key without disturbing each other."""
    box = make_aead(cipher, bytes(AEAD_KEY_SIZES[cipher]), backend=backend)
    first = box.seal(bytes(12), b"a", b"one")
    second = box.seal(bytes(11) + b"\x01", b"b", b"two")
    assert box.open(bytes(12), b"a", first[:16], first[16:]) == b"one"
    assert box.seal(bytes(12), b"a", b"one") == first
    assert box.open(bytes(11) + b"\x01", b"b", second[:16], second[16:]) == b"two"


def test_unavailable_native_bindings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aead, "_CFFI", None)
    monkeypatch.setattr(libcrypto, "_CTYPES", None)
    monkeypatch.setattr(libcrypto, "_CTYPES_TRIED", True)
    for backend in NATIVE:
        with pytest.raises(AeadBackendError):
            make_aead("AES-256-GCM", bytes(32), backend=backend)
        assert not backend_available(backend, "AES-256-GCM")
    assert backend_available("cryptography", "AES-256-GCM")


def test_cffi_binding_without_evp_functions_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """What cryptography 42+ looks like: a Binding().lib without EVP_CipherInit_ex."""

    class StrippedLib:
        ERR_clear_error = staticmethod(lambda: None)

    class FakeBinding:
        lib = StrippedLib()
        ffi = object()

    import cryptography.hazmat.bindings.openssl.binding as binding_module

    monkeypatch.setattr(binding_module, "Binding", FakeBinding)
    assert libcrypto.load_cffi() is None


def test_ctypes_contexts_are_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    if not backend_available("ctypes", "AES-256-GCM"):
        pytest.skip("libcrypto.so.3 unavailable")
    freed: list[int] = []
    original = libcrypto.free_context

    def counting(free: Callable[[int], None], ctx: int) -> None:
        freed.append(ctx)
        original(free, ctx)

    monkeypatch.setattr(libcrypto, "free_context", counting)
    box = make_aead("AES-256-GCM", bytes(32), backend="ctypes")
    box.seal(bytes(12), b"", b"x")
    del box
    gc.collect()
    assert len(freed) == 2  # one context per direction
    assert len(set(freed)) == 2


@pytest.mark.parametrize("backend", NATIVE)
def test_many_keys_come_and_go(backend: str) -> None:
    if not backend_available(backend, "CHACHA20-POLY1305"):
        pytest.skip(f"{backend} unavailable here")
    for i in range(2000):
        box = make_aead("CHACHA20-POLY1305", bytes([i & 0xFF]) * 32, backend=backend)
        sealed = box.seal(bytes(12), b"", b"p")
        assert box.open(bytes(12), b"", sealed[:16], sealed[16:]) == b"p"
