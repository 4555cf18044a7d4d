"""The handlers of the directives that bring key material: certificates, the private key, the
PKCS#12 bundle, peer fingerprints, and the passphrase that unlocks an encrypted key (`askpass`).

Like every handler (handlers.py), they decode what they are given and record settings; whether
the pieces fit together (key and certificate, passphrase and key) is decided in resolve.py.
"""

from __future__ import annotations

from . import keys, unlock
from .context import Context, Handler, error, key_error
from .keys import KeyMaterialError
from .lexer import Directive

ASK = "stdin"  # `askpass stdin` is bare `askpass`: ask on the console (misc.c get_user_pass_cr)


def h_certificates(key: str, what: str) -> Handler:
    def handle(ctx: Context, d: Directive) -> None:
        data, _inline, rest = ctx.material(d, what)
        if rest:
            raise error(d, "takes one file name", 1)
        try:
            ctx.put(d, key, keys.parse_certificates(data, what))
        except KeyMaterialError as exc:
            raise key_error(d, exc) from None

    return handle


def h_key(ctx: Context, d: Directive) -> None:
    data, _inline, rest = ctx.material(d, "the private key")
    if rest:
        raise error(d, "takes one file name", 1)
    try:
        ctx.put(d, "key", keys.parse_private_key(data))
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None


def h_pkcs12(ctx: Context, d: Directive) -> None:
    data, inline, rest = ctx.material(d, "the PKCS#12 bundle")
    if rest:
        raise error(d, "takes one file name", 1)
    try:
        ctx.put(d, "pkcs12", keys.parse_pkcs12(data, inline=inline))
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None


def h_peer_fingerprint(ctx: Context, d: Directive) -> None:
    text = d.inline if d.inline is not None else d.args[0].text
    if d.inline is None and d.args[0].text == "[inline]":
        text = ctx.material(d, "the fingerprints")[0].decode("utf-8", "replace")
    try:
        for digest in keys.parse_fingerprints(text):
            ctx.put(d, "peer_fingerprints", digest)
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None


def h_askpass(ctx: Context, d: Directive) -> None:
    """`askpass FILE`: the passphrase is the file's first line. Bare `askpass` (or `askpass
    stdin`) asks on the console, which is also what happens without `askpass`: nothing to
    record; a runtime that has a terminal asks there, the others say what to add."""
    if not d.args or d.args[0].text == ASK:
        return
    data, _inline, _rest = ctx.material(d, "the askpass file")
    try:
        ctx.put(d, "key_passphrase", unlock.parse_askpass(data))
    except KeyMaterialError as exc:
        raise key_error(d, exc) from None
