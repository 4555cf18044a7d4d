"""Which library stack this interpreter runs on: exact versions and the version-dependent paths.

    python -m tests.helpers.stack        # what `make versions` prints for each stack

The same lines head every pytest run (tests/conftest.py) and every benchmark run, so a result
always says which stack produced it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path

DISTRIBUTIONS = ("cryptography", "pyOpenSSL", "pyroute2", "PyYAML", "pytest", "hypothesis")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _origin(module_file: str | None) -> str:
    """ "debian" for Debian's dist-packages, "venv" for a virtual environment's site-packages."""
    if module_file is None:
        return "?"
    path = Path(module_file).resolve()
    if "dist-packages" in path.parts:
        return "debian"
    if Path(sys.prefix).resolve() in path.parents:
        return "venv"
    return str(path.parent)


def _nftables() -> str:
    try:
        import nftables
    except ImportError as exc:
        return f"nftables binding missing ({exc})"
    origin = _origin(nftables.__file__)
    if origin == "debian":
        return "nftables binding: python3-nftables (Debian)"
    return f"nftables binding: pip-nftables {_version('pip-nftables')} ({origin})"


def _openssl() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    linked = backend.openssl_version_text()
    import ctypes

    try:
        lib = ctypes.CDLL("libcrypto.so.3")
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        system = (lib.OpenSSL_version(0) or b"?").decode()
    except OSError:
        system = "libcrypto.so.3 missing"
    return f"OpenSSL: {linked} (cryptography), {system} (system libcrypto.so.3)"


def _compression() -> str:
    """The decompression bindings (the `compression` extra; Debian's python3-lz4/-lzo)."""
    parts = []
    for module, distribution in (("lz4.block", "lz4"), ("lzo", "python-lzo")):
        try:
            loaded = __import__(module, fromlist=["_"])
        except ImportError:
            parts.append(f"{distribution} not installed")
            continue
        version = _version(distribution)
        if version == "not installed":  # Debian's python3-lzo has no dist-info
            version = str(getattr(loaded, "__version__", "?"))
        parts.append(f"{distribution} {version} ({_origin(loaded.__file__)})")
    return "compression: " + ", ".join(parts)


def describe() -> list[str]:
    """One line per fact, no trailing newlines."""
    from miragevpn import aead, openssl_compat
    from miragevpn.kdf import AEAD_KEY_SIZES

    libs = ", ".join(f"{name} {_version(name)}" for name in DISTRIBUTIONS)
    import cryptography

    origin = _origin(cryptography.__file__)
    backends = {aead.selected_backend(c) for c in AEAD_KEY_SIZES}
    return [
        f"stack: Python {platform.python_version()} ({sys.executable}), libraries from {origin}",
        f"libraries: {libs}",
        _nftables(),
        _openssl(),
        _compression(),
        f"aead backend: {', '.join(sorted(backends))}; pyOpenSSL: ciphersuites via "
        f"{openssl_compat.CIPHERSUITES_ROUTE} API, "
        f"{'cryptography' if openssl_compat.TAKES_CRYPTOGRAPHY_OBJECTS else 'pyOpenSSL'} "
        "certificate objects",
    ]


if __name__ == "__main__":
    print("\n".join(describe()))
