"""Handlers of the user/password directives: auth-user-pass, auth-retry, static-challenge.

OpenVPN 2.6.14 (options.c) reads `static-challenge TEXT ECHO` with exactly two arguments: the
text shown when the one-time code is asked, and `atoi(ECHO)` non-zero to echo the typing. The
third "format" argument (`scrv1` | `concat`) only exists from OpenVPN 2.7; 2.6.14 refuses it,
and so do we. How the code travels is in miragevpn/challenge.py.
"""

from __future__ import annotations

import re

from . import values
from .context import Context, bad_arg, error
from .lexer import Directive
from .model import AuthRetry, AuthUserPass, Secret, StaticChallenge

_ATOI = re.compile(r"\s*([+-]?\d+)")  # what C's atoi reads; anything else counts as 0


def h_auth_user_pass(ctx: Context, d: Directive) -> None:
    if d.inline is None and not d.args:
        ctx.put(d, "auth_user_pass", AuthUserPass())
        return
    data, _inline, rest = ctx.material(d, "the credentials")
    if rest:
        raise error(d, "takes one file name", 1)
    try:
        username, password = user_and_password(data)
    except UnicodeDecodeError:
        raise error(d, "the credentials are not UTF-8 text", 0 if d.args else None) from None
    if not username:
        raise error(d, "the credentials' first line (the user name) is empty")
    ctx.put(
        d, "auth_user_pass", AuthUserPass(username, Secret(password.encode()) if password else None)
    )


def user_and_password(data: bytes) -> tuple[str, str]:
    """A credentials file or block (auth-user-pass, the proxies' auth files): the user name on
    line 1 (stripped), the password on line 2 (trailing blanks dropped; "" when there is none).
    Raises UnicodeDecodeError when it is not UTF-8."""
    lines = [line.rstrip("\r") for line in data.decode("utf-8").split("\n")]
    username = lines[0].strip()
    password = lines[1].rstrip() if len(lines) > 1 else ""
    return username, password


def h_auth_retry(ctx: Context, d: Directive) -> None:
    ctx.put(d, "auth_retry", AuthRetry(values.choice(d, 0, ("none", "nointeract", "interact"))))


def h_static_challenge(ctx: Context, d: Directive) -> None:
    if len(d.args) > 2:
        raise bad_arg(
            d,
            2,
            "OpenVPN 2.6 takes only the text and the echo flag (the format argument, "
            "'scrv1' or 'concat', came with OpenVPN 2.7)",
        )
    text, flag = d.args[0].text, d.args[1].text
    match = _ATOI.match(flag)
    echo = match is not None and int(match.group(1)) != 0
    if match is None or match.end() != len(flag):
        ctx.warn(d, f"echo flag '{flag}' is read as {int(echo)} (as OpenVPN does); write 0 or 1")
    ctx.put(d, "static_challenge", StaticChallenge(text=text, echo=echo))
