"""The one-time code prompt of the unix client (the terminal read itself: tests/interop)."""

from __future__ import annotations

from miragevpn.events import ChallengeRequested
from qubes_miragevpn.asktty import prompt_for


def test_the_prompt_is_openvpns_with_control_characters_escaped() -> None:
    plain = ChallengeRequested(text="Enter Authenticator Code", echo=True, dynamic=False)
    assert prompt_for(plain) == "CHALLENGE: Enter Authenticator Code "
    hostile = ChallengeRequested(text="\x1b]0;x\x07Code\u202e", echo=False, dynamic=False)
    assert prompt_for(hostile) == "CHALLENGE: \\x1b]0;x\\x07Code\\u202e "
