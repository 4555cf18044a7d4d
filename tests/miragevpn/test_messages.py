"""Control-channel text messages: NUL framing, classification, PUSH_REPLY reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.errors import DecodeError
from miragevpn.messages import (
    AuthFailed,
    AuthPending,
    Exit,
    Halt,
    Info,
    PushReply,
    Restart,
    Unrecognised,
    encode_control_message,
    parse_control_message,
    split_control_messages,
)


def test_split_keeps_partial_and_drops_non_printable() -> None:
    buffer = bytearray(b"PUSH_REPLY,ping 10\r\n\x00INFO,caf\xc3\xa9\x00\x00HALT,bye\x00RESTA")
    assert split_control_messages(buffer) == ["PUSH_REPLY,ping 10", "HALT,bye"]
    assert buffer == bytearray(b"RESTA")
    buffer += b"RT\x00"
    assert split_control_messages(buffer) == ["RESTART"]
    assert buffer == bytearray()


def test_split_bounds_text_without_nul() -> None:
    buffer = bytearray(b"x" * 70000)
    with pytest.raises(DecodeError):
        split_control_messages(buffer)
    assert buffer == bytearray()


def test_encode_control_message() -> None:
    assert encode_control_message("PUSH_REQUEST") == b"PUSH_REQUEST\x00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AUTH_FAILED", AuthFailed("")),
        ("AUTH_FAILED,bad password", AuthFailed("bad password")),
        ("AUTH_PENDING", AuthPending(None)),
        ("AUTH_PENDING,timeout 180", AuthPending(180.0)),
        ("RESTART", Restart("", frozenset())),
        ("RESTART,[N]server shutting down", Restart("server shutting down", frozenset("N"))),
        ("RESTART,[PN]x", Restart("x", frozenset("PN"))),
        ("HALT,go away", Halt("go away", frozenset())),
        ("INFO,WEB_AUTH::https://x", Info("WEB_AUTH::https://x", pre=False)),
        ("INFO_PRE,hello", Info("hello", pre=True)),
        ("EXIT", Exit()),
        ("PUSH_REPLY", PushReply((), more_follows=False)),
        ("PUSH_REPLYX", Unrecognised("PUSH_REPLYX")),
        ("HALTING", Unrecognised("HALTING")),
    ],
)
def test_classify(text: str, expected: object) -> None:
    assert parse_control_message(text) == expected


def test_temporary_auth_failure() -> None:
    assert AuthFailed("TEMP[backoff 30]:busy").temporary
    assert not AuthFailed("nope").temporary


@given(st.binary(max_size=200))
def test_split_arbitrary_bytes(data: bytes) -> None:
    buffer = bytearray(data)
    for message in split_control_messages(buffer):
        assert message.isprintable()
        assert not message.endswith(("\r", "\n"))
        parse_control_message(message)
