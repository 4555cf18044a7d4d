"""Key material, validated when parsed: PEM certificates and keys, PKCS#12, static keys,
tls-crypt-v2 client keys, peer fingerprints.

Each function takes the bytes as read (a file or an inline block) and returns the normalised
value for the model, or raises `KeyMaterialError` with a message for the user; the parser turns
that into a `ConfigError` at the directive's line. Whatever `cryptography` raises (ValueError,
UnsupportedAlgorithm, a Rust panic on a malformed structure...) becomes a `KeyMaterialError` in
plain words, without the library's text: the material is untrusted input.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .model import Secret, StaticKey

STATIC_KEY_BYTES = 256  # OpenVPN `struct key2`, crypto.c
STATIC_KEY_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
STATIC_KEY_END = "-----END OpenVPN Static key V1-----"
TLS_CRYPT_V2_CLIENT_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 client key-----"
TLS_CRYPT_V2_CLIENT_END = "-----END OpenVPN tls-crypt-v2 client key-----"
TLS_CRYPT_V2_SERVER_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 server key-----"
# tls_crypt.h: WKc = tag(32) || AES-256-CTR(Kc(256) || metadata) || length(2), at most 1024 bytes
TLS_CRYPT_V2_TAG = 32
TLS_CRYPT_V2_MAX_WKC = 1024
TLS_CRYPT_V2_MIN_WKC = TLS_CRYPT_V2_TAG + STATIC_KEY_BYTES + 2

_PEM_BEGIN = "-----BEGIN "
_PEM_END = "-----END "
_PEM_DASHES = "-----"
_PEM_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")

T = TypeVar("T")


class KeyMaterialError(ValueError):
    """Key material that does not decode, with a message for the user."""


def guarded(what: str, action: Callable[[], T]) -> T:
    """`action()`, with any exception from the crypto library turned into a plain message."""
    try:
        return action()
    except KeyMaterialError:
        raise
    except Exception:
        raise KeyMaterialError(f"{what} does not decode") from None
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise KeyMaterialError(f"{what} does not decode") from None


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyMaterialError(f"{what} is not PEM text (it has non-ASCII bytes)") from None


def _pem_label(line: str, marker: str) -> str | None:
    """The label of a `-----BEGIN LABEL-----` / `-----END LABEL-----` line, if it is one."""
    if not line.startswith(marker) or not line.endswith(_PEM_DASHES):
        return None
    label = line[len(marker) : -len(_PEM_DASHES)]
    if not label or len(line) < len(marker) + len(_PEM_DASHES) + 1:
        return None
    return label if set(label) <= _PEM_LABEL_CHARS else None


def pem_blocks(text: str, label: str) -> list[str]:
    """The PEM blocks with this label, in order; text around them (openssl dumps) is skipped.

    One pass over the lines (a BEGIN without its END costs nothing more than its line): a
    block runs from a `-----BEGIN LABEL-----` line to the next `-----END LABEL-----` line; a
    BEGIN line inside a block starts a new one.
    """
    blocks: list[str] = []
    current: list[str] | None = None
    current_label = ""
    for raw in text.split("\n"):
        line = raw.strip()
        begin = _pem_label(line, _PEM_BEGIN)
        if begin is not None:
            current, current_label = [line], begin
            continue
        if current is None:
            continue
        if _pem_label(line, _PEM_END) == current_label:
            current.append(line)
            if current_label == label:
                blocks.append("\n".join(current) + "\n")
            current = None
            continue
        current.append(raw.rstrip("\r"))
    return blocks


def parse_certificates(data: bytes, what: str) -> str:
    """One or more PEM certificates (`ca`, `cert`, `extra-certs`), normalised to PEM text."""
    blocks = pem_blocks(_text(data, what), "CERTIFICATE")
    if not blocks:
        raise KeyMaterialError(f"{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    for number, block in enumerate(blocks, 1):
        pem = block.encode()
        guarded(f"{what}: certificate {number}", partial(x509.load_pem_x509_certificate, pem))
    return "".join(blocks)


_PRIVATE_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


def parse_private_key(data: bytes, what: str = "the private key") -> Secret:
    """A PEM private key (PKCS#8, PKCS#1 or SEC1), kept as written: an encrypted one (PKCS#8
    ENCRYPTED PRIVATE KEY or traditional Proc-Type) is opened with its passphrase later."""
    text = _text(data, what)
    blocks = [b for label in _PRIVATE_KEY_LABELS for b in pem_blocks(text, label)]
    if not blocks:
        raise KeyMaterialError(f"{what} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if len(blocks) > 1:
        raise KeyMaterialError(f"{what} holds {len(blocks)} private keys; give exactly one")
    block = blocks[0]
    pem = block.encode()

    def load() -> None:
        # TypeError: encrypted, and it decoded up to the encryption (unlock.py opens it)
        with contextlib.suppress(TypeError):
            serialization.load_pem_private_key(pem, password=None)

    guarded(what, load)
    return Secret(pem)


def parse_pkcs12(data: bytes, *, inline: bool) -> Secret:
    """A PKCS#12 bundle: DER from a file, base64 in an inline block. Returned as DER."""
    der = data
    if inline:
        try:
            der = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KeyMaterialError("the inline <pkcs12> block is not base64") from None

    def load() -> Secret:
        opened = open_pkcs12(der, (None, b""))
        if opened is not None:
            key, cert, _extra = opened
            if key is None or cert is None:
                raise KeyMaterialError(
                    "the PKCS#12 bundle needs both a private key and a certificate"
                )
            return Secret(der)
        if not looks_like_pkcs12(der):
            raise KeyMaterialError("the PKCS#12 bundle does not decode")
        return Secret(der)  # protected by a password: opened when it is known (unlock.py)

    return guarded("the PKCS#12 bundle", load)


def open_pkcs12(der: bytes, passwords: tuple[bytes | None, ...]) -> Any | None:
    """(key, certificate, other certificates) of the bundle opened with the first password
    that works, or None. The library's words for a failure change between releases: never
    read them. Its warnings (the newest parses BER after failing DER, and says so) stay
    quiet: whether the bundle is usable is decided here, in our words."""
    for password in passwords:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pkcs12.load_key_and_certificates(der, password)
        except (TypeError, ValueError):
            continue
    return None


def _der_header(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(tag, start of content, length) of the DER element at `at`, or None."""
    if at + 2 > len(data):
        return None
    tag, first = data[at], data[at + 1]
    if first < 0x80:
        return tag, at + 2, first
    count = first & 0x7F
    if not 1 <= count <= 4 or at + 2 + count > len(data):
        return None
    return tag, at + 2 + count, int.from_bytes(data[at + 2 : at + 2 + count], "big")


# id-data and id-signedData (RFC 2315): the two content types a PFX's authSafe may have
_PKCS7_DATA = bytes.fromhex("2a864886f70d010701")
_PKCS7_SIGNED = bytes.fromhex("2a864886f70d010702")


def looks_like_pkcs12(der: bytes) -> bool:
    """Whether `der` has the shape of a PFX (RFC 7292), without opening it:
    SEQUENCE { version INTEGER (3), authSafe ContentInfo, macData SEQUENCE OPTIONAL }, where
    ContentInfo is SEQUENCE { OID id-data | id-signedData, [0] content }, each element ending
    where its parent says. A bundle that does not open with a password but has this shape is
    taken as protected by one; anything else does not decode."""
    outer = _der_header(der, 0)
    if outer is None or outer[0] != 0x30 or outer[1] + outer[2] != len(der):
        return False
    version = _der_header(der, outer[1])
    if version is None or version[:1] != (0x02,) or der[version[1] : version[1] + 1] != b"\x03":
        return False
    if version[2] != 1:
        return False
    auth_safe = _der_header(der, version[1] + version[2])
    if auth_safe is None or auth_safe[0] != 0x30:
        return False
    auth_end = auth_safe[1] + auth_safe[2]
    oid = _der_header(der, auth_safe[1])
    if oid is None or oid[0] != 0x06:
        return False
    if der[oid[1] : oid[1] + oid[2]] not in (_PKCS7_DATA, _PKCS7_SIGNED):
        return False
    content = _der_header(der, oid[1] + oid[2])
    if content is None or content[0] != 0xA0 or content[1] + content[2] != auth_end:
        return False
    if auth_end == len(der):
        return True
    mac = _der_header(der, auth_end)
    return mac is not None and mac[0] == 0x30 and mac[1] + mac[2] == len(der)


def _armoured(text: str, begin: str, end: str, what: str) -> str:
    start = text.find(begin)
    if start < 0:
        raise KeyMaterialError(f"{what} has no '{begin}' line")
    stop = text.find(end, start)
    if stop < 0:
        raise KeyMaterialError(f"{what} has no '{end}' line")
    return text[start + len(begin) : stop]


def parse_static_key(data: bytes, what: str) -> StaticKey:
    """An "OpenVPN Static key V1": 2048 bits of hex between the armour lines (crypto.c)."""
    text = _text(data, what)
    body = _armoured(text, STATIC_KEY_BEGIN, STATIC_KEY_END, what)
    hex_digits = "".join(body.split())
    try:
        key = bytes.fromhex(hex_digits)
    except ValueError:
        raise KeyMaterialError(f"{what}: the static key is not hexadecimal") from None
    if len(key) != STATIC_KEY_BYTES:
        raise KeyMaterialError(
            f"{what}: a static key has {STATIC_KEY_BYTES * 8} bits, this one {len(key) * 8}"
        )
    return StaticKey(Secret(key))


def parse_tls_crypt_v2_client_key(data: bytes) -> tuple[StaticKey, bytes]:
    """A tls-crypt-v2 client key: base64 of Kc (256 bytes) followed by WKc (tls_crypt.c)."""
    what = "the tls-crypt-v2 key"
    text = _text(data, what)
    if TLS_CRYPT_V2_SERVER_BEGIN in text:
        raise KeyMaterialError("this is a tls-crypt-v2 *server* key; a client needs a client key")
    body = _armoured(text, TLS_CRYPT_V2_CLIENT_BEGIN, TLS_CRYPT_V2_CLIENT_END, what)
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError(f"{what} is not base64") from None
    kc, wkc = raw[:STATIC_KEY_BYTES], raw[STATIC_KEY_BYTES:]
    if len(kc) < STATIC_KEY_BYTES or not TLS_CRYPT_V2_MIN_WKC <= len(wkc) <= TLS_CRYPT_V2_MAX_WKC:
        raise KeyMaterialError(f"{what} has the wrong length ({len(raw)} bytes)")
    if int.from_bytes(wkc[-2:], "big") != len(wkc):
        raise KeyMaterialError(f"{what}: the wrapped key's length field does not match")
    return StaticKey(Secret(kc)), wkc


def parse_fingerprints(text: str) -> tuple[bytes, ...]:
    """SHA-256 fingerprints `AB:CD:...`, one per line (inline) or one argument; `#` comments."""
    digests: list[bytes] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        parts = line.split(":")
        if len(parts) != 32 or any(len(p) != 2 for p in parts):
            raise KeyMaterialError(
                f"'{line}' is not a SHA-256 fingerprint (32 hex bytes separated by ':')"
            )
        try:
            digests.append(bytes.fromhex("".join(parts)))
        except ValueError:
            raise KeyMaterialError(f"'{line}' is not a SHA-256 fingerprint") from None
    if not digests:
        raise KeyMaterialError("no fingerprint given")
    return tuple(digests)
