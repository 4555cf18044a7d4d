"""One AEAD key (AES-GCM, ChaCha20-Poly1305) that keeps its OpenSSL cipher contexts across packets.

    aead = make_aead("AES-256-GCM", key)        # once per key
    sealed = aead.seal(nonce, aad, plaintext)   # tag[16] || ciphertext (OpenVPN's wire order)
    plain = aead.open(nonce, aad, tag, ciphertext)   # AuthenticationError on a bad tag

Nonces are 12 bytes, tags 16 (crypto.h: OPENVPN_AEAD_TAG_LENGTH); AAD may be empty.

Why this module exists ("hand-written code a library already does")
-------------------------------------------------------------------
`cryptography`'s `AESGCM`/`ChaCha20Poly1305` are what we would rather use, and they stay the
fallback. But in cryptography 38 (Debian 12) every `encrypt`/`decrypt` call builds and frees a
new EVP cipher context and re-expands the key (`_aead_setup`), which dominated a profile of
the client under iperf3 (20-48 % of its CPU in AESGCM calls). Keeping one initialised context
per key and direction and setting only the IV per packet (EVP_CipherInit_ex with a NULL cipher
and key) is what this module does. Measured per call, 8-byte AAD, one core of the dev VM
(cryptography 38.0.4, OpenSSL 3.0, Python 3.11; noisy to about ±15 %):

                            cffi          ctypes        cryptography (fallback)
    AES-256-GCM   92 B      1.8 / 1.8     4.4 / 4.5     11.3 / 10.8    µs seal / open
    AES-256-GCM 1400 B      2.3 / 2.3     4.8 / 4.8     12.6 / 11.8
    CHACHA20     92 B       2.0 / 2.1     4.5 / 4.5     11.4 / 10.8
    CHACHA20   1400 B       2.9 / 3.0     5.6 / 5.4     12.6 / 12.0

Whole data packets (bench/datachannel_micro.py) go from about 80,000 to 250,000-430,000 per
second and direction.

Newer cryptography releases changed the picture (measured with bench/datachannel_micro.py
and timeit on Python 3.13, 1400-byte packets, a loaded 2-core VM, so roughly): the public API
costs about 11 µs per call in 41, 5-9 µs in 42-44 (close to ctypes' 5-6 µs) and 1-3.5 µs from
45 on (50: about 2 µs), faster than our ctypes path. So from cryptography 45 the public API
comes first (`PREFERENCE`), and this module's native paths serve the older releases only.

The bindings, tried in `PREFERENCE` order per cipher; the first that loads, has every function
and passes the known-answer self-test below is used for every key of that cipher. Before
cryptography 45 the order is:

1. "cffi": `cryptography`'s own compiled binding (`Binding().lib`). Fastest per call (cffi
   API mode), and it is the same libcrypto cryptography uses. cryptography 42 and later removed
   most EVP_Cipher* functions from it (Fedora 41/42 ship 4x), hence the capability check.
2. "ctypes": the system `libcrypto.so.3` (OpenSSL 3 on Debian 12/13 and Fedora 41/42),
   independent of the cryptography version; its six foreign calls per packet cost about 2.5 µs
   more than cffi's (argument conversion), still well below a fresh context. Loaded by that
   name only (no find_library search).
3. "cryptography": the public `AESGCM`/`ChaCha20Poly1305` objects: always available, slow
   before cryptography 42, the fastest from 45 (then first in `PREFERENCE`).

Memory safety of the native paths: every length is checked in Python before a native call
(nonce 12, tag 16, data below a C int); output goes into a buffer owned by the key, sized for
tag + data + a spare block, replaced (never resized in place) when a larger packet comes and
referenced from a local for the whole call (a cffi pointer into it, `buf + 16`, does not
keep it alive: the large-packet test caught exactly that); bytes returned are copies.
Contexts are freed when the key is collected (`ffi.gc` / `weakref.finalize`).
Unauthenticated plaintext is never returned: `open` returns only after EVP_CipherFinal_ex
accepted the tag, and a failure clears OpenSSL's error queue so it cannot surface in an
unrelated cryptography call later.

Threads: a key is single-threaded. The native calls release the GIL and the contexts and the
output buffer are per key, so two threads must not use one key at the same time (the engine
runs on one event loop; a `DataChannelKey` is never shared).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography import __version__ as _cryptography_version
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import libcrypto
from .errors import AuthenticationError
from .kdf import AEAD_KEY_SIZES

if TYPE_CHECKING:  # ctypes itself is imported only when that backend is first needed
    import ctypes

__all__ = [
    "BACKENDS",
    "MAX_DATA_LENGTH",
    "NONCE_LENGTH",
    "PREFERENCE",
    "TAG_LENGTH",
    "Aead",
    "AeadBackendError",
    "backend_available",
    "make_aead",
    "selected_backend",
]

NONCE_LENGTH: Final = 12  # replay id[4] || implicit IV[8] (crypto.c: openvpn_encrypt_aead)
TAG_LENGTH: Final = 16  # crypto.h: OPENVPN_AEAD_TAG_LENGTH
MAX_DATA_LENGTH: Final = (1 << 31) - 1 - 64  # EVP_CipherUpdate takes a C int, with room to spare

BACKENDS: Final = ("cffi", "ctypes", "cryptography")  # every backend, fastest first before 45


def _preference(cryptography_version: str) -> tuple[str, ...]:
    """The order backends are tried in for this cryptography release (module docstring)."""
    try:
        major = int(cryptography_version.split(".")[0])
    except ValueError:
        return BACKENDS
    if major >= 45:
        return ("cryptography", "cffi", "ctypes")
    return BACKENDS


PREFERENCE: Final = _preference(_cryptography_version)

# OpenSSL names (EVP_get_cipherbyname) of the ciphers we support
_OPENSSL_NAMES: Final = {
    "AES-128-GCM": b"aes-128-gcm",
    "AES-192-GCM": b"aes-192-gcm",
    "AES-256-GCM": b"aes-256-gcm",
    "CHACHA20-POLY1305": b"chacha20-poly1305",
}
# evp.h
_EVP_CTRL_AEAD_SET_IVLEN: Final = 0x9
_EVP_CTRL_AEAD_GET_TAG: Final = 0x10
_EVP_CTRL_AEAD_SET_TAG: Final = 0x11

_SPARE: Final = 16  # one block past the data: EVP_CipherUpdate may write up to inl + block - 1
_KEEP_BUFFER: Final = 1 << 16  # larger one-off packets get a buffer of their own, then freed
_FIRST_BUFFER: Final = 2048


class AeadBackendError(RuntimeError):
    """A native AEAD binding failed where it cannot (sealing, setup): a bug, not the peer."""


class Aead(Protocol):
    """One AEAD key, both directions. Single-threaded (see the module docstring)."""

    @property
    def backend(self) -> str: ...

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """tag || ciphertext."""
        ...

    def open(self, nonce: bytes, aad: bytes, tag: bytes, ciphertext: bytes) -> bytes:
        """The plaintext; AuthenticationError if the tag does not verify."""
        ...


def _check_key(cipher: str, key: bytes) -> None:
    size = AEAD_KEY_SIZES.get(cipher)
    if size is None:
        raise ValueError(f"unsupported AEAD cipher {cipher!r}")
    if len(key) != size:
        raise ValueError(f"{cipher} needs a {size}-byte key")


def _check_seal(nonce: bytes, aad: bytes, plaintext: bytes) -> None:
    if len(nonce) != NONCE_LENGTH:
        raise ValueError(f"AEAD nonce must be {NONCE_LENGTH} bytes")
    if len(aad) > MAX_DATA_LENGTH or len(plaintext) > MAX_DATA_LENGTH:
        raise ValueError("AEAD input too long")


def _check_open(nonce: bytes, aad: bytes, tag: bytes, ciphertext: bytes) -> None:
    _check_seal(nonce, aad, ciphertext)
    if len(tag) != TAG_LENGTH:
        raise AuthenticationError(f"AEAD tag must be {TAG_LENGTH} bytes")


# --------------------------------------------------------------------------- fallback


class _CryptographyAead:
    """The public `cryptography` API: a fresh OpenSSL context per call inside, always there."""

    __slots__ = ("_aead",)
    backend = "cryptography"

    def __init__(self, cipher: str, key: bytes) -> None:
        _check_key(cipher, key)
        self._aead = ChaCha20Poly1305(key) if cipher == "CHACHA20-POLY1305" else AESGCM(key)

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        _check_seal(nonce, aad, plaintext)
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        return sealed[-TAG_LENGTH:] + sealed[:-TAG_LENGTH]

    def open(self, nonce: bytes, aad: bytes, tag: bytes, ciphertext: bytes) -> bytes:
        _check_open(nonce, aad, tag, ciphertext)
        try:
            return self._aead.decrypt(nonce, ciphertext + tag, aad)
        except InvalidTag:
            raise AuthenticationError("AEAD tag mismatch") from None


# --------------------------------------------------------------------------- cffi


class _CffiAead:
    """Persistent EVP_CIPHER_CTX per direction through cryptography's cffi `lib`."""

    __slots__ = ("_dec", "_enc", "_ffi", "_lib", "_out", "_outlen", "_scratch")
    backend = "cffi"

    def __init__(self, cipher: str, key: bytes) -> None:
        _check_key(cipher, key)
        if _CFFI is None:
            raise AeadBackendError("cffi binding unavailable")
        lib, ffi = self._lib, self._ffi = _CFFI
        evp = lib.EVP_get_cipherbyname(_OPENSSL_NAMES[cipher])
        if evp == ffi.NULL:
            raise AeadBackendError(f"OpenSSL has no {cipher}")
        self._enc = self._context(evp, key, 1)
        self._dec = self._context(evp, key, 0)
        self._outlen = ffi.new("int *")
        self._scratch = ffi.new("unsigned char[]", 2 * _SPARE)
        self._out = self._buffer(_FIRST_BUFFER)

    def _context(self, evp: Any, key: bytes, enc: int) -> Any:
        lib, ffi = self._lib, self._ffi
        raw = lib.EVP_CIPHER_CTX_new()
        if raw == ffi.NULL:
            raise AeadBackendError("EVP_CIPHER_CTX_new failed")
        ctx = ffi.gc(raw, lib.EVP_CIPHER_CTX_free)
        null = ffi.NULL
        if (
            lib.EVP_CipherInit_ex(ctx, evp, null, null, null, enc) != 1
            or lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_AEAD_SET_IVLEN, NONCE_LENGTH, null) != 1
            or lib.EVP_CipherInit_ex(ctx, null, null, key, null, enc) != 1
        ):
            lib.ERR_clear_error()
            raise AeadBackendError("EVP cipher context setup failed")
        return ctx

    def _buffer(self, size: int) -> tuple[Any, Any, int]:
        """(buffer, pointer to its data part after the tag, data capacity)."""
        buf = self._ffi.new("unsigned char[]", TAG_LENGTH + size + _SPARE)
        return buf, buf + TAG_LENGTH, size

    def _out_for(self, n: int) -> tuple[Any, Any, int]:
        out = self._out
        if n <= out[2]:
            return out
        if n > _KEEP_BUFFER:
            return self._buffer(n)
        out = self._buffer(max(n, 2 * out[2]))
        self._out = out
        return out

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        n = len(plaintext)
        a = len(aad)
        if len(nonce) != NONCE_LENGTH or n > MAX_DATA_LENGTH or a > MAX_DATA_LENGTH:
            _check_seal(nonce, aad, plaintext)
        buf, data, _ = self._out if n <= self._out[2] else self._out_for(n)
        lib, ffi = self._lib, self._ffi
        ctx = self._enc
        outlen = self._outlen
        null = ffi.NULL
        if (
            lib.EVP_CipherInit_ex(ctx, null, null, null, nonce, 1) != 1
            or (a and lib.EVP_CipherUpdate(ctx, null, outlen, aad, a) != 1)
            or lib.EVP_CipherUpdate(ctx, data, outlen, plaintext, n) != 1
            or outlen[0] != n
            or lib.EVP_CipherFinal_ex(ctx, self._scratch, outlen) != 1
            or outlen[0] != 0
            or lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_AEAD_GET_TAG, TAG_LENGTH, buf) != 1
        ):
            lib.ERR_clear_error()
            raise AeadBackendError("AEAD seal failed in OpenSSL")
        sealed: bytes = ffi.buffer(buf, TAG_LENGTH + n)[:]
        return sealed

    def open(self, nonce: bytes, aad: bytes, tag: bytes, ciphertext: bytes) -> bytes:
        n = len(ciphertext)
        a = len(aad)
        if (
            len(nonce) != NONCE_LENGTH
            or len(tag) != TAG_LENGTH
            or n > MAX_DATA_LENGTH
            or a > MAX_DATA_LENGTH
        ):
            _check_open(nonce, aad, tag, ciphertext)
        # `buf` owns the memory `data` points into: keep it referenced until the copy
        buf, data, _ = self._out if n <= self._out[2] else self._out_for(n)
        lib, ffi = self._lib, self._ffi
        ctx = self._dec
        outlen = self._outlen
        null = ffi.NULL
        if (
            lib.EVP_CipherInit_ex(ctx, null, null, null, nonce, 0) != 1
            or (a and lib.EVP_CipherUpdate(ctx, null, outlen, aad, a) != 1)
            or lib.EVP_CipherUpdate(ctx, data, outlen, ciphertext, n) != 1
            or outlen[0] != n
            or lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_AEAD_SET_TAG, TAG_LENGTH, tag) != 1
            or lib.EVP_CipherFinal_ex(ctx, self._scratch, outlen) != 1
            or outlen[0] != 0
        ):
            lib.ERR_clear_error()
            raise AuthenticationError("AEAD tag mismatch")
        plain: bytes = ffi.buffer(data, n)[:]
        del buf
        return plain


# --------------------------------------------------------------------------- ctypes


class _CtypesAead:
    """Persistent EVP_CIPHER_CTX per direction through ctypes on the system libcrypto.so.3."""

    __slots__ = (
        "__weakref__",
        "_dec",
        "_enc",
        "_lib",
        "_out",
        "_outlen",
        "_outlen_ptr",
        "_scratch",
    )
    backend = "ctypes"

    def __init__(self, cipher: str, key: bytes) -> None:
        _check_key(cipher, key)
        c = libcrypto.ctypes_lib()
        if c is None:
            raise AeadBackendError("libcrypto.so.3 unavailable")
        self._lib = c
        evp = c.get_cipherbyname(_OPENSSL_NAMES[cipher])
        if not evp:
            raise AeadBackendError(f"OpenSSL has no {cipher}")
        self._enc = self._context(c, evp, key, 1)
        self._dec = self._context(c, evp, key, 0)
        self._outlen = c.c_int(0)
        self._outlen_ptr = c.pointer(self._outlen)
        self._scratch = c.create_string_buffer(2 * _SPARE)
        self._out = self._buffer(_FIRST_BUFFER)

    def _context(self, c: libcrypto.Libcrypto, evp: int, key: bytes, enc: int) -> int:
        ctx = c.ctx_new()
        if not ctx:
            raise AeadBackendError("EVP_CIPHER_CTX_new failed")
        weakref.finalize(self, libcrypto.free_context, c.ctx_free, ctx)
        if (
            c.init(ctx, evp, None, key, None, enc) != 1
            or c.ctrl(ctx, _EVP_CTRL_AEAD_SET_IVLEN, NONCE_LENGTH, None) != 1
            or c.init(ctx, None, None, key, None, enc) != 1
        ):
            c.clear_errors()
            raise AeadBackendError("EVP cipher context setup failed")
        return ctx

    def _buffer(self, size: int) -> tuple[ctypes.Array[ctypes.c_char], int, int]:
        """(buffer, address of its start (the tag), data capacity after the tag)."""
        buf = self._lib.create_string_buffer(TAG_LENGTH + size + _SPARE)
        return buf, self._lib.addressof(buf), size

    def _out_for(self, n: int) -> tuple[ctypes.Array[ctypes.c_char], int, int]:
        out = self._out
        if n <= out[2]:
            return out
        if n > _KEEP_BUFFER:
            return self._buffer(n)
        out = self._buffer(max(n, 2 * out[2]))
        self._out = out
        return out

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        n = len(plaintext)
        a = len(aad)
        if len(nonce) != NONCE_LENGTH or n > MAX_DATA_LENGTH or a > MAX_DATA_LENGTH:
            _check_seal(nonce, aad, plaintext)
        buf, addr, _ = self._out if n <= self._out[2] else self._out_for(n)
        c = self._lib
        ctx = self._enc
        outlen = self._outlen_ptr
        if (
            c.init(ctx, None, None, None, nonce, 1) != 1
            or (a and c.update(ctx, None, outlen, aad, a) != 1)
            or c.update(ctx, addr + TAG_LENGTH, outlen, plaintext, n) != 1
            or self._outlen.value != n
            or c.final(ctx, self._scratch, outlen) != 1
            or self._outlen.value != 0
            or c.ctrl(ctx, _EVP_CTRL_AEAD_GET_TAG, TAG_LENGTH, addr) != 1
        ):
            c.clear_errors()
            raise AeadBackendError("AEAD seal failed in OpenSSL")
        sealed = c.string_at(addr, TAG_LENGTH + n)
        del buf  # kept alive until here
        return sealed

    def open(self, nonce: bytes, aad: bytes, tag: bytes, ciphertext: bytes) -> bytes:
        n = len(ciphertext)
        a = len(aad)
        if (
            len(nonce) != NONCE_LENGTH
            or len(tag) != TAG_LENGTH
            or n > MAX_DATA_LENGTH
            or a > MAX_DATA_LENGTH
        ):
            _check_open(nonce, aad, tag, ciphertext)
        buf, addr, _ = self._out if n <= self._out[2] else self._out_for(n)
        c = self._lib
        ctx = self._dec
        outlen = self._outlen_ptr
        data = addr + TAG_LENGTH
        if (
            c.init(ctx, None, None, None, nonce, 0) != 1
            or (a and c.update(ctx, None, outlen, aad, a) != 1)
            or c.update(ctx, data, outlen, ciphertext, n) != 1
            or self._outlen.value != n
            or c.ctrl(ctx, _EVP_CTRL_AEAD_SET_TAG, TAG_LENGTH, tag) != 1
            or c.final(ctx, self._scratch, outlen) != 1
            or self._outlen.value != 0
        ):
            c.clear_errors()
            raise AuthenticationError("AEAD tag mismatch")
        plain = c.string_at(data, n)
        del buf  # kept alive until here
        return plain


# --------------------------------------------------------------------------- selection

_FACTORIES: Final[dict[str, Callable[[str, bytes], Aead]]] = {
    "cffi": _CffiAead,
    "ctypes": _CtypesAead,
    "cryptography": _CryptographyAead,
}

# Known answers, one per cipher (nonce, aad, plaintext -> tag, ciphertext).
_KAT: Final[dict[str, tuple[bytes, bytes, bytes, bytes, bytes, bytes]]] = {
    # Reference §11.5 (OpenVPN test_ssl.c test_data_channel_known_vectors_shortpktid):
    # key2[:32], packet id 1 || key2[64:72], AAD 07 00 00 17 || packet id
    "AES-256-GCM": (
        bytes.fromhex("616361676163616f3838383838383838515351575153515f72726f7874787073"),
        bytes.fromhex("00000001212321272123212f"),
        bytes.fromhex("0700001700000001"),
        b"The quick little fox jumps over the bureaucratic hurdles",
        bytes.fromhex("1fdd908f0e9dc25e79d832020d58e73f"),
        # bytes 10..16 (a82e6b1706d9) are test_ssl.c's; the rest as cryptography's AESGCM computes
        bytes.fromhex(
            "2262f977d6bb2118fa0ea82e6b1706d949aefcb5efcbbacd5c09a9ab45f4d391"
            "d3f68794cb0b82c3d33389b61622b3281598e2ff6d5cc38b"
        ),
    ),
    # McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test case 4 (truncated P)
    "AES-128-GCM": (
        bytes.fromhex("feffe9928665731c6d6a8f9467308308"),
        bytes.fromhex("cafebabefacedbaddecaf888"),
        bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        bytes.fromhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ),
        bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47"),
        bytes.fromhex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
        ),
    ),
    # same document, test case 10
    "AES-192-GCM": (
        bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c"),
        bytes.fromhex("cafebabefacedbaddecaf888"),
        bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        bytes.fromhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ),
        bytes.fromhex("2519498e80f1478f37ba55bd6d27618c"),
        bytes.fromhex(
            "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c"
            "7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710"
        ),
    ),
    # RFC 8439 §2.8.2
    "CHACHA20-POLY1305": (
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
    ),
}


def _self_test(factory: Callable[[str, bytes], Aead], cipher: str) -> bool:
    """Known answer both ways, a forged tag refused, and the context still good afterwards."""
    key, nonce, aad, plain, tag, ciphertext = _KAT[cipher]
    try:
        aead = factory(cipher, key)
        for _ in range(2):  # twice: the second packet runs on a reused context
            sealed = aead.seal(nonce, aad, plain)
            if sealed != tag + ciphertext:
                return False
            try:
                aead.open(nonce, aad, bytes(TAG_LENGTH), sealed[TAG_LENGTH:])
                return False
            except AuthenticationError:
                pass
            if aead.open(nonce, aad, tag, sealed[TAG_LENGTH:]) != plain:
                return False
            if aead.seal(nonce, b"", b"") == aead.seal(nonce, aad, b""):
                return False  # the AAD must count even with no data
        return True
    except (AeadBackendError, AuthenticationError, ValueError, TypeError, OverflowError):
        return False


def backend_available(backend: str, cipher: str) -> bool:
    """True if `backend` loads and passes the self-test for `cipher` (tests use this)."""
    return _self_test(_FACTORIES[backend], cipher)


_CFFI: tuple[Any, Any] | None = libcrypto.load_cffi()
_SELECTED: Final[dict[str, str]] = {}  # cipher -> backend, filled on first use


def selected_backend(cipher: str) -> str:
    """The backend `make_aead` uses for `cipher`, chosen by self-test on its first use."""
    cipher = cipher.upper()
    backend = _SELECTED.get(cipher)
    if backend is None:
        if cipher not in _OPENSSL_NAMES:
            raise KeyError(cipher)
        backend = next(b for b in PREFERENCE if backend_available(b, cipher))
        _SELECTED[cipher] = backend
    return backend


def make_aead(cipher: str, key: bytes, *, backend: str | None = None) -> Aead:
    """One AEAD key; `backend` forces a binding (tests, benchmarks), else the selected one."""
    cipher = cipher.upper()
    _check_key(cipher, key)
    if backend is None:
        backend = selected_backend(cipher)
    elif backend not in _FACTORIES:
        raise ValueError(f"unknown AEAD backend {backend!r}")
    return _FACTORIES[backend](cipher, key)
