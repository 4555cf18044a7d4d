"""control.py: each message from the server, in each state, gives reactions as values and
changes nothing itself."""

from __future__ import annotations

import ipaddress

import pytest

from miragevpn import control
from miragevpn.clientstate import Established, Handshaking, Pulling, Session
from miragevpn.config.model import (
    AuthRetry,
    Compression,
    ReplayWindow,
    Secret,
    StaticKey,
    TlsAuth,
    Transport,
)
from miragevpn.datakeys import DataChannelParams, DataKeys
from miragevpn.errors import AuthFailed, RemoteProtocolError
from miragevpn.events import ControlMessageReceived, ProgressReported
from miragevpn.keying import Keying
from miragevpn.messages import PushReply, PushReplyAssembler
from miragevpn.push import parse_pushed_options
from miragevpn.remotes import Advance
from miragevpn.tunnelsettings import resolve_tunnel_settings
from tests.helpers.pki import Pki
from tests.miragevpn.scenario import T0, counter_rng, make_config

SERVER = ipaddress.IPv4Address("192.0.2.1")
REPLY = [
    "topology subnet",
    "ifconfig 10.8.0.2 255.255.255.0",
    "route-gateway 10.8.0.1",
    "peer-id 9",
    "cipher AES-256-GCM",
    "protocol-flags tls-ekm",
    "ping 10",
]


def session(pki: Pki, **changes: object) -> Session:
    keying = Keying(make_config(pki, **changes), rng=counter_rng(), credentials=None, tls_ekm=True)
    return keying.new_session(SERVER, 1194, Transport.UDP, T0)


def pulling(pki: Pki) -> Pulling:
    return Pulling(session(pki), T0 + 60, T0 + 5, PushReplyAssembler())


def established(pki: Pki) -> Established:
    config = make_config(pki)
    params = DataChannelParams.create(
        cipher="AES-256-GCM",
        compression=Compression.NONE,
        peer_id=None,
        replay_window=ReplayWindow(),
        ekm=True,
    )
    pushed = parse_pushed_options(REPLY, config)
    settings, _ = resolve_tunnel_settings(
        config, pushed, remote_address=SERVER, cipher="AES-256-GCM", key_derivation="tls-ekm"
    )
    return Established.from_push(
        config,
        pushed,
        session=session(pki),
        data=DataKeys(params, 0, bytes(range(256))),
        settings=settings,
    )


def react(text: str, state: object, pki: Pki, now: float = T0 + 1) -> list[control.Reaction]:
    return control.react(text, state, config=make_config(pki), now=now)  # type: ignore[arg-type]


def test_auth_failed_stops_and_forgets_the_token_and_says_the_server_refused(pki: Pki) -> None:
    forget, stop = react("AUTH_FAILED,bad password", pulling(pki), pki)
    assert forget == control.ForgetAuthToken()
    assert isinstance(stop, control.StopSession) and isinstance(stop.error, AuthFailed)
    assert stop.error.reason == "bad password" and not stop.error.temporary
    assert stop.reason == (
        "authentication failed: the server refused our credentials (AUTH_FAILED,bad password)"
    )
    [_, stop] = react("AUTH_FAILED", pulling(pki), pki)
    assert isinstance(stop, control.StopSession)
    assert "AUTH_FAILED without a reason" in stop.reason


def test_auth_failed_temp_restarts(pki: Pki) -> None:
    forget, restart = react("AUTH_FAILED,TEMP[backoff 30]: busy", pulling(pki), pki)
    assert forget == control.ForgetAuthToken()
    assert isinstance(restart, control.RestartSession)
    assert restart.reason.startswith("temporary authentication failure: the server refused")
    assert "AUTH_FAILED,TEMP[backoff 30]: busy" in restart.reason
    assert restart.advance is Advance.NO  # OpenVPN: no advance unless the flags say so
    assert restart.backoff == 30


@pytest.mark.parametrize(
    ("reason", "backoff", "advance"),
    [
        ("TEMP", 0.0, Advance.NO),
        ("TEMP: busy", 0.0, Advance.NO),
        ("TEMP[backoff 42,advance remote]:busy", 42.0, Advance.REMOTE),
        ("TEMP[advance addr]", 0.0, Advance.ADDRESS),
        ("TEMP[backoff x,advance sideways,colour red]:?", 0.0, Advance.NO),  # ignored flags
        ("TEMP[backoff 99999999]", 3600.0, Advance.NO),  # capped
        ("TEMP[backoff 5", 0.0, Advance.NO),  # no closing bracket: no flags
    ],
)
def test_temporary_failure_flags_as_openvpn_parses_them(
    reason: str, backoff: float, advance: Advance
) -> None:
    assert control.temp_failure(reason) == (backoff, advance)


def test_auth_failed_after_an_auth_token_retries_with_the_password(pki: Pki) -> None:
    config = make_config(pki)
    forget, restart = control.react(
        "AUTH_FAILED", pulling(pki), config=config, now=T0, auth_token_in_use=True
    )
    assert forget == control.ForgetAuthToken()
    assert isinstance(restart, control.RestartSession) and restart.advance is Advance.NO
    assert "auth-token may have expired" in restart.reason


@pytest.mark.parametrize("retry", [AuthRetry.NOINTERACT, AuthRetry.INTERACT])
def test_auth_retry_restarts_instead_of_ending(pki: Pki, retry: AuthRetry) -> None:
    config = make_config(pki, auth_retry=retry)
    forget, restart = control.react("AUTH_FAILED,no such user", pulling(pki), config=config, now=T0)
    assert forget == control.ForgetAuthToken()
    assert isinstance(restart, control.RestartSession)
    assert "no such user" in restart.reason and f"auth-retry {retry.value}" in restart.reason


def test_auth_pending_extends_only_while_pulling_and_changes_nothing(pki: Pki) -> None:
    state = pulling(pki)
    reactions = react("AUTH_PENDING,timeout 120", state, pki, now=T0 + 10)
    assert reactions == [
        control.ExtendHandWindow(until=T0 + 130),
        ProgressReported(message="authentication pending"),
    ]
    assert state.deadline == T0 + 60  # the client applies it, not control
    assert react("AUTH_PENDING", state, pki) == [ProgressReported(message="authentication pending")]
    handshaking = Handshaking(state.session, T0 + 60, None)
    assert react("AUTH_PENDING,timeout 120", handshaking, pki) == [
        ProgressReported(message="authentication pending")
    ]


@pytest.mark.parametrize(
    ("text", "advance", "forgets"),
    [
        ("RESTART", Advance.NO, True),
        ("RESTART,[N]moving", Advance.REMOTE, True),
        ("RESTART,[P]:keep it", Advance.NO, False),
        ("RESTART,[NP]both", Advance.REMOTE, False),
    ],
)
def test_restart_flags(pki: Pki, text: str, advance: Advance, forgets: bool) -> None:
    reactions = react(text, established(pki), pki)
    restart = reactions[-1]
    assert isinstance(restart, control.RestartSession) and restart.advance is advance
    assert restart.reason.startswith("server asked to restart: ")
    assert (control.ForgetAuthToken() in reactions) is forgets


def test_halt_exit_and_info(pki: Pki) -> None:
    [stop] = react("HALT,maintenance", established(pki), pki)
    assert isinstance(stop, control.StopSession)
    assert isinstance(stop.error, RemoteProtocolError)
    assert stop.reason == "server halted: maintenance"
    assert react("EXIT", established(pki), pki) == [
        control.RestartSession(reason="server is exiting (EXIT)")
    ]
    assert react("INFO,hello", established(pki), pki) == [
        ControlMessageReceived(message="INFO,hello")
    ]
    assert react("SOMETHING_NEW,x", established(pki), pki) == [
        ControlMessageReceived(message="SOMETHING_NEW,x")
    ]


def test_push_reply_parts_go_to_the_client_and_late_ones_only_bring_a_token(pki: Pki) -> None:
    state = pulling(pki)
    [collect] = react("PUSH_REPLY,ping 10,push-continuation 2", state, pki)
    assert collect == control.CollectPushReply(part=PushReply(("ping 10",), more_follows=True))
    assert state.assembler.add(PushReply(("ping 5",), False)) == ("ping 5",)  # react fed nothing
    assert react("PUSH_REPLY,ping 10", established(pki), pki) == []
    assert react("PUSH_REPLY,auth-token abc", established(pki), pki) == [
        control.UseAuthToken(token=Secret(b"abc"), user=None)
    ]
    assert react("PUSH_REPLY,ping 10", Handshaking(state.session, T0, None), pki) == []


def test_a_complete_push_reply_gives_the_tunnel_then_the_token(pki: Pki) -> None:
    state = pulling(pki)
    config = make_config(pki)
    reactions = control.push_reply(
        [*REPLY, "auth-token tok", "bogus-option 1"], state.session, config=config, tls_ekm=True
    )
    *notes, tunnel, token = reactions
    assert all(isinstance(n, ProgressReported) for n in notes)
    assert any("bogus-option" in n.message for n in notes if isinstance(n, ProgressReported))
    assert isinstance(tunnel, control.Tunnel)
    assert (tunnel.params.cipher, tunnel.params.peer_id, tunnel.params.ekm) == (
        "AES-256-GCM",
        9,
        True,
    )
    assert str(tunnel.settings.ipv4) == "10.8.0.2/24" and tunnel.settings.remote_address == SERVER
    assert tunnel.settings.key_derivation == "tls-ekm"
    assert token == control.UseAuthToken(token=Secret(b"tok"), user=None)
    prf = control.push_reply(REPLY, state.session, config=config, tls_ekm=False)
    [prf_tunnel] = [r for r in prf if isinstance(r, control.Tunnel)]
    assert not prf_tunnel.params.ekm and prf_tunnel.settings.key_derivation == "tls1-prf"


def test_a_pushed_option_applied_with_a_remark_is_reported(pki: Pki) -> None:
    state = pulling(pki)
    reactions = control.push_reply(
        [*REPLY, "route 10.9.1.7 255.255.255.0"],
        state.session,
        config=make_config(pki),
        tls_ekm=True,
    )
    [tunnel] = [r for r in reactions if isinstance(r, control.Tunnel)]
    assert tunnel.pushed.notes
    said = [r.message for r in reactions if isinstance(r, ProgressReported)]
    assert [m for m in said if m.startswith("pushed option: ")] == [
        f"pushed option: {note}" for note in tunnel.pushed.notes
    ]
    assert any("host bits" in m and "10.9.1.0/24" in m for m in said)


def test_push_replies_we_cannot_use(pki: Pki) -> None:
    state = pulling(pki)
    config = make_config(pki, data_ciphers=("AES-128-GCM",))
    [restart] = control.push_reply(REPLY, state.session, config=config, tls_ekm=True)
    assert isinstance(restart, control.RestartSession)
    assert restart.reason.startswith("unusable PUSH_REPLY: ")
    no_cipher = [line for line in REPLY if not line.startswith("cipher")]
    [stop] = control.push_reply(no_cipher, state.session, config=make_config(pki), tls_ekm=True)
    assert isinstance(stop, control.StopSession) and isinstance(stop.error, RemoteProtocolError)
    assert "data-ciphers-fallback" in stop.reason and "BF-CBC" in stop.reason
    assert stop.reason.startswith("cannot set up the data channel: ")


def test_no_pushed_cipher_uses_the_fallback_with_our_auth(pki: Pki) -> None:
    state = pulling(pki)
    no_cipher = [line for line in REPLY if not line.startswith("cipher")]
    cbc = make_config(pki, data_ciphers_fallback="AES-256-CBC", auth="SHA256")
    reactions = control.push_reply(no_cipher, state.session, config=cbc, tls_ekm=True)
    [tunnel] = [r for r in reactions if isinstance(r, control.Tunnel)]
    assert (tunnel.params.cipher, tunnel.params.auth) == ("AES-256-CBC", "SHA256")
    notes = [r.message for r in reactions if isinstance(r, control.ProgressReported)]
    assert any("legacy data cipher AES-256-CBC with HMAC-SHA256" in n for n in notes)


def test_connection_lost_reasons_follow_the_phase(pki: Pki) -> None:
    state = pulling(pki)
    handshaking = Handshaking(state.session, T0 + 60, None)
    assert "before it answered our reset" in control.connection_lost_reason(handshaking)
    state.session.their_session_id = b"\x5e" * 8
    assert "during the TLS handshake" in control.connection_lost_reason(handshaking)
    assert "before its PUSH_REPLY" in control.connection_lost_reason(state)
    assert control.connection_lost_reason(established(pki)) == (
        "the connection to the server was closed"
    )


def test_a_handshake_timeout_names_the_tls_auth_key_when_packets_failed_it(pki: Pki) -> None:
    config = make_config(pki, tls_protection=TlsAuth(StaticKey(Secret(bytes(range(256))))))
    s = session(pki, tls_protection=config.tls_protection)
    assert control.with_authentication_hint("timed out", s, config) == "timed out"
    s.failed_authentication = 2
    hinted = control.with_authentication_hint("timed out", s, config)
    assert hinted.startswith("timed out: 2 packets from the server failed tls-auth")
    s.their_session_id = b"\x5e" * 8  # something authenticated after all: no hint
    assert control.with_authentication_hint("timed out", s, config) == "timed out"
