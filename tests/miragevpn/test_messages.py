"""Control-channel text messages: NUL framing, classification, PUSH_REPLY reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.client import Client
from miragevpn.errors import DecodeError
from miragevpn.events import ProgressReported, SessionRestarting
from miragevpn.messages import (
    MAX_AUTH_PENDING_TIMEOUT,
    MAX_MESSAGE,
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
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import MiniServer
from tests.miragevpn.scenario import T0, counter_rng, drain, exchange, make_config, wall_clock


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


# --------------------------------------------------------------- through the client (issue 8)


def test_finding_9_a_hostile_auth_pending_cannot_pin_the_client(pki: Pki) -> None:
    client = Client(
        make_config(pki, hand_window=10.0), rng=counter_rng(), now=T0, wall_clock=wall_clock
    )
    client.handle_connected(now=T0)
    exchange(client, MiniServer(pki, reply="AUTH_PENDING,timeout 99999999999"), T0)
    assert ProgressReported(message="authentication pending") in drain(client)
    client.handle_timer(now=T0 + MAX_AUTH_PENDING_TIMEOUT - 1)
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))
    client.handle_timer(now=T0 + MAX_AUTH_PENDING_TIMEOUT)
    restarts = [e for e in drain(client) if isinstance(e, SessionRestarting)]
    assert [e.reason for e in restarts] == ["no PUSH_REPLY within hand-window"]


def test_finding_3_an_oversized_push_reply_ends_the_attempt_in_words(pki: Pki) -> None:
    client = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    hostile = "PUSH_REPLY,setenv X " + "A" * 60_000 + ",push-continuation 2"
    exchange(client, MiniServer(pki, reply=hostile), T0, rounds=200)
    restarts = [e for e in drain(client) if isinstance(e, SessionRestarting)]
    assert len(restarts) == 1
    assert f"longer than {MAX_MESSAGE} bytes" in restarts[0].reason
