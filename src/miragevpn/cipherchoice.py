"""Which data cipher and HMAC digest a session uses once the PUSH_REPLY is in.

In order (reference §4.3, §6.3; OpenVPN 2.6's ssl_ncp.c and the client's fallback):

1. the `cipher` the server pushed (negotiation: it is one of our data-ciphers, push.py checked);
2. otherwise the server does not negotiate (2.3/2.4-style servers, SoftEther): the `cipher`
   named in the server's OCC options string (its key-method-2 message, sent inside TLS);
3. otherwise our `data-ciphers-fallback`, then our legacy `cipher`.

The HMAC digest of a CBC cipher (`auth`) is never pushed: both sides configure it. The server's
options string names its own (`auth SHA256`), so we take that when it names one we implement
and say so when it differs from ours; otherwise our `auth` (default SHA1).

BF-CBC is refused with words naming `data-ciphers-fallback`; a server that names no cipher at
all (its 2.6 default is BF-CBC) gets the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cbc import CBC_KEY_SIZES, DIGEST_SIZES
from .config.model import Config
from .kdf import AEAD_KEY_SIZES

__all__ = ["CipherChoice", "choose_data_cipher", "parse_options_string"]

_NULL_DIGEST = "[NULL-DIGEST]"
_NULL_CIPHER = "[NULL-CIPHER]"


@dataclass(frozen=True, slots=True)
class CipherChoice:
    """The data cipher, its HMAC digest (None for AEAD), where it came from, notes for the log;
    or `refusal` (why there is no usable cipher)."""

    cipher: str | None
    auth: str | None
    source: str  # "pushed", "server options string", "data-ciphers-fallback", "cipher"
    notes: tuple[str, ...] = ()
    refusal: str | None = None

    @property
    def is_legacy(self) -> bool:
        return self.auth is not None


def parse_options_string(options: str) -> dict[str, str]:
    """The `name value` items of an OCC options string (`V4,dev-type tun,cipher X,...`)."""
    items: dict[str, str] = {}
    for item in options.split(","):
        name, _, value = item.strip().partition(" ")
        if name and name not in items:
            items[name] = value.strip()
    return items


def _refuse(why: str) -> CipherChoice:
    return CipherChoice(None, None, "", refusal=why)


def choose_data_cipher(
    config: Config, *, pushed_cipher: str | None, their_options: str | None
) -> CipherChoice:
    """The cipher and digest for this session (module doc)."""
    theirs = parse_options_string(their_options or "")
    their_cipher = theirs.get("cipher", "").upper() or None
    notes: list[str] = []
    if pushed_cipher is not None:
        cipher, source = pushed_cipher.upper(), "pushed"
    elif their_cipher is not None and their_cipher != _NULL_CIPHER:
        cipher, source = their_cipher, "server options string"
        notes.append(f"the server did not negotiate a cipher; its options name {cipher}")
    elif config.data_ciphers_fallback is not None:
        cipher, source = config.data_ciphers_fallback.upper(), "data-ciphers-fallback"
    elif config.cipher is not None:
        cipher, source = config.cipher.upper(), "cipher"
    else:
        return _refuse(
            "the server pushed no cipher and named none (OpenVPN's old default is BF-CBC, "
            "which we do not support); set data-ciphers-fallback to the server's cipher "
            "(e.g. AES-256-CBC)"
        )
    if cipher == "BF-CBC":
        return _refuse(
            "the server uses BF-CBC (Blowfish, 64-bit blocks, SWEET32), which we do not "
            "support; ask for a modern server config (AES-256-GCM), or if the server also "
            "accepts one, set data-ciphers-fallback to it (e.g. AES-256-CBC)"
        )
    if cipher in AEAD_KEY_SIZES:
        return CipherChoice(cipher, None, source, tuple(notes))
    if cipher not in CBC_KEY_SIZES:
        return _refuse(
            f"data cipher {cipher} ({source}) is not supported; "
            f"we implement {', '.join((*AEAD_KEY_SIZES, *CBC_KEY_SIZES))}"
        )
    auth = config.auth.upper()
    their_auth = theirs.get("auth", "").upper()
    if their_auth and their_auth != _NULL_DIGEST:
        if their_auth not in DIGEST_SIZES:
            return _refuse(f"the server authenticates data with {their_auth}, not supported")
        if their_auth != auth:
            notes.append(f"the server's options name auth {their_auth} (ours: {auth}); using it")
            auth = their_auth
    notes.append(
        f"legacy data cipher {cipher} with HMAC-{auth} ({source}): no AEAD; "
        "prefer AES-256-GCM where the server allows it"
    )
    return CipherChoice(cipher, auth, source, tuple(notes))
