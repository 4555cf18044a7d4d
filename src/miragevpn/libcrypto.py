"""The engine's one native binding: OpenSSL's EVP cipher functions, loaded on first use.

Two ways to reach them, shared by the AEAD keys (`aead.py`) and the CBC+HMAC keys (`cbc.py`):

- `load_cffi()`: `cryptography`'s own compiled binding (`Binding().lib`, cffi API mode), if the
  installed release still exports every function we call (42 and later removed most of them);
- `ctypes_lib()`: the system `libcrypto.so.3` (OpenSSL 3) through ctypes, by that name only
  (no find_library search), loaded once.

Why a native path at all, and measurements per backend: see `aead.py`'s docstring. ctypes is
imported only inside this module's functions, never at import time (tests/test_layout.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import ctypes

__all__ = ["CFFI_FUNCTIONS", "Libcrypto", "ctypes_lib", "free_context", "load_cffi"]

CFFI_FUNCTIONS: Final = (
    "EVP_get_cipherbyname",
    "EVP_CIPHER_CTX_new",
    "EVP_CIPHER_CTX_free",
    "EVP_CipherInit_ex",
    "EVP_CipherUpdate",
    "EVP_CipherFinal_ex",
    "EVP_CIPHER_CTX_ctrl",
    "ERR_clear_error",
)


def load_cffi() -> tuple[Any, Any] | None:
    """(lib, ffi) of cryptography's binding if it still has every function we call."""
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding

        new_binding: Any = Binding  # typed or not depending on the cryptography release
        binding = new_binding()
        lib: Any = binding.lib
        ffi: Any = binding.ffi
    except Exception:  # any failure means "not this binding"
        return None
    if not all(hasattr(lib, name) for name in CFFI_FUNCTIONS):
        return None
    return lib, ffi


class NotOpenSSL3(RuntimeError):
    """The library called libcrypto.so.3 is not OpenSSL 3 (its ABI is not the one we declare)."""


class Libcrypto:
    """The few libcrypto.so.3 functions we call, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        import ctypes

        # the ctypes helpers the hot path uses, so that callers need no module-level import
        self.c_int = ctypes.c_int
        self.pointer = ctypes.pointer
        self.create_string_buffer = ctypes.create_string_buffer
        self.addressof = ctypes.addressof
        self.string_at = ctypes.string_at
        p, i, b = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        pint = ctypes.POINTER(ctypes.c_int)

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = argtypes
            return f

        version = fn("OpenSSL_version_num", ctypes.c_ulong)
        if version() < 0x30000000:
            raise NotOpenSSL3("libcrypto is not OpenSSL 3")
        self.get_cipherbyname: Callable[[bytes], int | None] = fn("EVP_get_cipherbyname", p, b)
        self.ctx_new: Callable[[], int | None] = fn("EVP_CIPHER_CTX_new", p)
        self.ctx_free: Callable[[int], None] = fn("EVP_CIPHER_CTX_free", None, p)
        # EVP_CipherInit_ex(ctx, cipher, engine, key, iv, enc)
        self.init: Callable[..., int] = fn("EVP_CipherInit_ex", i, p, p, p, b, b, i)
        # EVP_CipherUpdate(ctx, out, &outl, in, inl)
        self.update: Callable[..., int] = fn("EVP_CipherUpdate", i, p, p, pint, b, i)
        # EVP_CipherFinal_ex(ctx, out, &outl)
        self.final: Callable[..., int] = fn("EVP_CipherFinal_ex", i, p, p, pint)
        # EVP_CIPHER_CTX_ctrl(ctx, type, arg, ptr): ptr is read (SET_TAG) or written (GET_TAG)
        self.ctrl: Callable[..., int] = fn("EVP_CIPHER_CTX_ctrl", i, p, i, i, p)
        self.clear_errors: Callable[[], None] = fn("ERR_clear_error", None)


def _load_ctypes() -> Libcrypto | None:
    import ctypes

    try:
        return Libcrypto(ctypes.CDLL("libcrypto.so.3"))
    except (OSError, AttributeError, NotOpenSSL3):
        return None


_CTYPES: Libcrypto | None = None
_CTYPES_TRIED = False


def ctypes_lib() -> Libcrypto | None:
    """libcrypto through ctypes, loaded on first use (never at import); None if unusable."""
    global _CTYPES, _CTYPES_TRIED
    if not _CTYPES_TRIED:
        _CTYPES_TRIED = True
        _CTYPES = _load_ctypes()
    return _CTYPES


def free_context(free: Callable[[int], None], ctx: int) -> None:
    """Free one EVP_CIPHER_CTX (a `weakref.finalize` callback of the key that owns it)."""
    free(ctx)
