"""One-time codes: OpenVPN's static and dynamic challenge/response, as text (pure).

Static (`static-challenge TEXT ECHO` in the config): the code is asked together with the
password, and the password field carries both (OpenVPN 2.6 misc.c: get_user_pass_cr):

    SCRV1:<base64(password)>:<base64(response)>

Dynamic (the server asks after the password): the server refuses the login with
`AUTH_FAILED,CRV1:<flags>:<state_id>:<base64(username)>:<challenge text>` (push.c:
receive_auth_failed keeps what follows "AUTH_FAILED,"; misc.c: get_auth_challenge splits it at
the first four colons, so the text may hold colons). Flags: `E` echo the response, `R` a
response is required (OpenVPN's console asks in any case; so do we). The next connection sends
the decoded username and the password

    CRV1::<state_id>::<response>

Which connection sends which password is keying.py's; when to ask is the client's.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

__all__ = [
    "Challenge",
    "ChallengeKind",
    "dynamic_response_password",
    "parse_dynamic_challenge",
    "static_response_password",
]

DYNAMIC_PREFIX = "CRV1:"


class ChallengeKind(enum.Enum):
    STATIC = "static"  # the config's static-challenge, asked before connecting
    DYNAMIC = "dynamic"  # the server's CRV1, asked after it refused the password


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A question for the user; the answer is the one-time code (never logged)."""

    kind: ChallengeKind
    text: str  # the server's or the config's words, shown as they are
    echo: bool  # the code may be shown while it is typed
    response_required: bool = True  # CRV1 without R: an empty answer is fine
    # dynamic: the server's handle for this question; it authenticates the answer, so it is
    # kept out of repr (as the code and the password are)
    state_id: str = field(default="", repr=False)
    username: str = ""  # dynamic: the username to send with the answer


def parse_dynamic_challenge(reason: str) -> Challenge | None:
    """The challenge in an AUTH_FAILED reason starting with "CRV1:"; None if it is not one
    or is malformed (fewer than five fields, a username that is not base64 UTF-8)."""
    if not reason.startswith(DYNAMIC_PREFIX):
        return None
    parts = reason.split(":", 4)
    if len(parts) != 5:
        return None
    _, flags, state_id, user64, text = parts
    try:
        username = base64.b64decode(user64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return Challenge(
        kind=ChallengeKind.DYNAMIC,
        text=text,
        echo="E" in flags,
        response_required="R" in flags,
        state_id=state_id,
        username=username,
    )


def static_response_password(password: bytes, response: bytes) -> bytes:
    """The password field for a static challenge: SCRV1:base64(password):base64(response)."""
    return b"SCRV1:" + base64.b64encode(password) + b":" + base64.b64encode(response)


def dynamic_response_password(state_id: str, response: bytes) -> bytes:
    """The password field answering a CRV1 challenge: CRV1::state_id::response."""
    return b"CRV1::" + state_id.encode("utf-8") + b"::" + response
