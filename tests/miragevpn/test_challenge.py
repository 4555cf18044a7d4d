"""One-time codes: the CRV1/SCRV1 texts (challenge.py) and the client asking for them."""

from __future__ import annotations

import base64

from miragevpn.challenge import (
    ChallengeKind,
    dynamic_response_password,
    parse_dynamic_challenge,
    static_response_password,
)
from miragevpn.client import Client
from miragevpn.config.model import AuthUserPass, Secret, StaticChallenge
from miragevpn.errors import AuthFailed
from miragevpn.events import (
    ChallengeRequested,
    ConnectionRequested,
    DisconnectionRequested,
    SessionEnded,
    SessionRestarting,
)
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import MiniServer
from tests.miragevpn.scenario import T0, counter_rng, drain, exchange, make_config, wall_clock

ALICE = AuthUserPass(username="alice", password=Secret(b"pass:word"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_dynamic_challenge_is_read_as_openvpns_get_auth_challenge() -> None:
    c = parse_dynamic_challenge(f"CRV1:R,E:Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l:{b64('cr1')}:Enter PIN")
    assert c is not None and c.kind is ChallengeKind.DYNAMIC
    assert (c.state_id, c.username, c.text) == (
        "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l",
        "cr1",
        "Enter PIN",
    )
    assert c.echo and c.response_required
    assert "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l" not in repr(c)  # it authenticates the answer
    # no flags; the text keeps its colons (only the first four split)
    c = parse_dynamic_challenge(f"CRV1::s1:{b64('bob')}:Code: sent to +41:79")
    assert c is not None and not c.echo and not c.response_required
    assert c.text == "Code: sent to +41:79"
    for bad in ("CRV1:R:s1", "CRV1:R:s1:not base64!:x", "TEMP:x", f"CRV1:R:s:{b64('x')}"):
        assert parse_dynamic_challenge(bad) is None, bad
    not_utf8 = base64.b64encode(bytes([0xFF])).decode()
    assert parse_dynamic_challenge(f"CRV1:R:s:{not_utf8}:x") is None


def test_the_passwords_that_carry_a_code() -> None:
    # misc.c: "SCRV1:%s:%s" of base64(password), base64(response); "CRV1::%s::%s"
    assert static_response_password(b"pass:word", b"123456") == b"SCRV1:cGFzczp3b3Jk:MTIzNDU2"
    assert static_response_password(b"", b"") == b"SCRV1::"
    assert dynamic_response_password("st8", b"9876") == b"CRV1::st8::9876"


def static_client(pki: Pki, **changes: object) -> Client:
    config = make_config(
        pki,
        auth_user_pass=ALICE,
        static_challenge=StaticChallenge(text="Enter Authenticator Code", echo=True),
        **changes,
    )
    return Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)


def test_a_static_challenge_is_asked_before_connecting_and_sent_as_scrv1(pki: Pki) -> None:
    client = static_client(pki)
    events = drain(client)
    assert events == [ChallengeRequested(text="Enter Authenticator Code", echo=True, dynamic=False)]
    assert client.get_timer() is None  # waits for a person, no deadline
    client.handle_timer(now=T0 + 10_000)
    assert drain(client) == []
    client.answer_challenge("123456", now=T0 + 20)
    [connect] = drain(client)
    assert isinstance(connect, ConnectionRequested)
    client.answer_challenge("654321", now=T0 + 20)  # nothing is asked now: ignored
    assert drain(client) == []
    client.handle_connected(now=T0 + 20)
    server = MiniServer(pki)
    exchange(client, server, T0 + 20)
    sent = server.client_key_methods[0]
    assert b"alice\0" in sent and b"SCRV1:cGFzczp3b3Jk:MTIzNDU2\0" in sent
    assert b"pass:word" not in sent
    # a renegotiation of this session resends it (as OpenVPN resends its cached password)
    server.soft_reset(1)
    exchange(client, server, T0 + 21)
    assert b"SCRV1:cGFzczp3b3Jk:MTIzNDU2\0" in server.client_key_methods[1]
    # a new connection without an auth-token needs a new code
    server.send_text("RESTART")
    exchange(client, server, T0 + 22)
    events = drain(client)
    assert any(isinstance(e, SessionRestarting) for e in events)
    client.handle_timer(now=T0 + 400)
    [asked] = drain(client)
    assert isinstance(asked, ChallengeRequested) and not asked.dynamic


def test_no_static_question_while_the_auth_token_replaces_the_password(pki: Pki) -> None:
    client = static_client(pki)
    drain(client)
    client.answer_challenge("123456", now=T0)
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply=MiniServer(pki).reply + ",auth-token tok-1")
    exchange(client, server, T0)
    server.send_text("RESTART,[P]:keep the token")  # P: the token stays good
    exchange(client, server, T0 + 1)
    drain(client)
    client.handle_timer(now=T0 + 400)
    assert any(isinstance(e, ConnectionRequested) for e in drain(client))  # no question


def test_a_dynamic_challenge_reconnects_with_the_servers_username_and_state(pki: Pki) -> None:
    config = make_config(pki, auth_user_pass=ALICE)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    drain(client)
    client.handle_connected(now=T0)
    crv1 = f"AUTH_FAILED,CRV1:R:st-42:{b64('alice@corp')}:Enter the code sent to +41 79"
    exchange(client, MiniServer(pki, reply=crv1), T0)
    events = drain(client)
    assert isinstance(events[-2], DisconnectionRequested)
    assert events[-1] == ChallengeRequested(
        text="Enter the code sent to +41 79", echo=False, dynamic=True, response_required=True
    )
    assert not any(isinstance(e, SessionEnded | SessionRestarting) for e in events)
    assert client.get_timer() is None
    client.answer_challenge("9876", now=T0 + 30)
    [connect] = drain(client)
    assert isinstance(connect, ConnectionRequested) and str(connect.address) == "192.0.2.1"
    assert client.stats.restarts == 0  # not a failure: no back-off, same address
    client.handle_connected(now=T0 + 30)
    server = MiniServer(pki)
    exchange(client, server, T0 + 30)
    sent = server.client_key_methods[0]
    assert b"alice@corp\0" in sent and b"CRV1::st-42::9876\0" in sent
    assert b"pass:word" not in sent
    # the answer was for that connection only: the next one sends the password again
    server.send_text("RESTART")
    exchange(client, server, T0 + 31)
    drain(client)
    client.handle_timer(now=T0 + 400)
    drain(client)
    client.handle_connected(now=T0 + 400)
    again = MiniServer(pki)
    exchange(client, again, T0 + 400)
    assert b"alice\0" in again.client_key_methods[0]
    assert b"pass:word\0" in again.client_key_methods[0]


def test_a_malformed_dynamic_challenge_ends_the_session(pki: Pki) -> None:
    client = Client(
        make_config(pki, auth_user_pass=ALICE), rng=counter_rng(), now=T0, wall_clock=wall_clock
    )
    client.handle_connected(now=T0)
    exchange(client, MiniServer(pki, reply="AUTH_FAILED,CRV1:R:st4te:not base64:Code?"), T0)
    ended = drain(client)[-1]
    assert isinstance(ended, SessionEnded) and isinstance(ended.error, AuthFailed)
    assert "one-time code request (CRV1) is malformed" in ended.reason
    assert "st4te" not in ended.reason and "st4te" not in str(ended.error), ended.reason


def test_closing_while_asking_ends_at_once(pki: Pki) -> None:
    client = static_client(pki)
    drain(client)
    client.close(now=T0 + 1)
    assert drain(client) == [SessionEnded(reason="closed")]
    client.answer_challenge("123456", now=T0 + 2)
    assert drain(client) == []
