"""clientstate.py: the transition table, each state's deadline, Established's link timers,
and the drop counters."""

from __future__ import annotations

import ipaddress
import typing

from miragevpn.challenge import Challenge, ChallengeKind
from miragevpn.clientstate import (
    TRANSITIONS,
    Asking,
    Closing,
    Connecting,
    Ended,
    Established,
    Handshaking,
    Pulling,
    Resolving,
    Session,
    State,
    Stats,
    Waiting,
    next_deadline,
)
from miragevpn.config.model import Compression, Config, ReplayWindow, Transport
from miragevpn.datakeys import DataChannelParams, DataKeys
from miragevpn.errors import DropReason
from miragevpn.keying import Keying
from miragevpn.messages import PushReplyAssembler
from miragevpn.push import parse_pushed_options
from miragevpn.tunnelsettings import resolve_tunnel_settings
from tests.helpers.pki import Pki
from tests.miragevpn.scenario import T0, counter_rng, make_config

SERVER = ipaddress.IPv4Address("192.0.2.1")
ALL_STATES = set(typing.get_args(State))
SESSION_STATES = {Handshaking, Pulling, Established, Closing}


def sent_session(pki: Pki) -> Session:
    """A session whose hard reset went out at T0 (retransmission due at T0 + tls-timeout)."""
    keying = Keying(make_config(pki), rng=counter_rng(), credentials=None, tls_ekm=True)
    session = keying.new_session(SERVER, 1194, Transport.UDP, T0)
    [key_state] = session.keys.key_states()
    assert session.keys.control_deadline() == 0.0  # queued, never sent: due now
    key_state.reliable.packets_to_send(
        T0, my_session_id=session.my_session_id, their_session_id=None
    )
    return session


def established(config: Config, session: Session, push: list[str]) -> Established:
    pushed = parse_pushed_options(push, config)
    settings, _ = resolve_tunnel_settings(
        config, pushed, remote_address=SERVER, cipher="AES-256-GCM", key_derivation="tls-ekm"
    )
    params = DataChannelParams.create(
        cipher="AES-256-GCM",
        compression=Compression.NONE,
        peer_id=None,
        replay_window=ReplayWindow(),
        ekm=True,
    )
    data = DataKeys(params, 0, bytes(range(256)))
    return Established.from_push(config, pushed, session=session, data=data, settings=settings)


def test_the_table_covers_every_state_and_ended_is_terminal() -> None:
    assert set(TRANSITIONS) == ALL_STATES
    assert all(targets <= ALL_STATES for targets in TRANSITIONS.values())
    assert TRANSITIONS[Ended] == frozenset()
    assert all(Ended in TRANSITIONS[s] for s in ALL_STATES - {Ended})  # any state may end


def test_the_table_allows_only_the_protocols_order() -> None:
    into = {s: {a for a, targets in TRANSITIONS.items() if s in targets} for s in ALL_STATES}
    assert into[Established] == {Pulling}  # no tunnel without a PUSH_REPLY
    assert into[Pulling] == {Handshaking, Pulling}  # Pulling → Pulling: a fresh assembler
    assert into[Handshaking] == {Connecting}
    assert into[Closing] == {Established}  # an orderly exit needs a tunnel to announce it on
    assert TRANSITIONS[Closing] == {Ended}  # closing never reconnects
    # every state that tried and failed may wait and try again (not Closing, not Ended)
    assert {s for s in ALL_STATES if Waiting in TRANSITIONS[s]} == ALL_STATES - {
        Waiting,
        Asking,
        Closing,
        Ended,
    }
    # a one-time code is asked before an attempt (static) or after the server asked (CRV1,
    # AUTH_FAILED: pulling, or a renegotiation); the answer starts the next attempt
    assert into[Asking] == {Waiting, Handshaking, Pulling, Established}
    assert TRANSITIONS[Asking] == {Resolving, Connecting, Ended}
    assert SESSION_STATES.isdisjoint(TRANSITIONS[Waiting])  # a session starts by connecting


def test_states_without_a_session_have_their_own_deadline_or_none() -> None:
    assert next_deadline(Waiting(T0 + 7)) == T0 + 7
    assert next_deadline(Connecting(SERVER, T0 + 3)) == T0 + 3
    assert next_deadline(Resolving()) is None
    question = Challenge(kind=ChallengeKind.STATIC, text="Code", echo=False)
    assert next_deadline(Asking(question)) is None  # a person takes the time they take
    assert next_deadline(Ended()) is None


def test_handshaking_and_pulling_take_the_earliest_of_theirs_and_the_retransmission(
    pki: Pki,
) -> None:
    session = sent_session(pki)
    retransmit = session.keys.control_deadline()
    assert retransmit is not None and T0 < retransmit <= T0 + 2.0
    assert next_deadline(Handshaking(session, T0 + 60, T0 + 1)) == T0 + 1  # server-poll-timeout
    assert next_deadline(Handshaking(session, T0 + 60, None)) == retransmit
    assert next_deadline(Handshaking(session, T0 + 0.5, None)) == T0 + 0.5  # hand-window
    assert next_deadline(Pulling(session, T0 + 60, T0 + 1.5, PushReplyAssembler())) == min(
        T0 + 1.5, retransmit
    )


def test_established_link_timers_and_pushed_values_override_configured(pki: Pki) -> None:
    config = make_config(pki, ping=30.0, ping_restart=120.0, explicit_exit_notify=2)
    session = sent_session(pki)
    state = established(config, session, ["ping 10", "ping-restart 60", "protocol-flags cc-exit"])
    assert (state.ping, state.ping_restart, state.ping_exit) == (10.0, 60.0, None)
    assert state.cc_exit and state.exit_notify == 2
    session.last_sent, session.last_received = T0 + 100, T0 + 95
    retransmit = session.keys.control_deadline()
    assert retransmit is not None
    assert next_deadline(state) == min(T0 + 110, T0 + 155, retransmit)
    off = established(config, session, ["ping 0"])  # a pushed 0 turns the keepalive off
    assert off.ping is None and off.ping_restart == 120.0 and not off.cc_exit


def test_closing_waits_for_its_deadline_and_the_next_occ_exit(pki: Pki) -> None:
    session = sent_session(pki)
    retransmit = session.keys.control_deadline()
    assert retransmit is not None
    assert next_deadline(Closing(session, None, T0 + 0.2, None, "closed")) == T0 + 0.2
    assert next_deadline(Closing(session, None, T0 + 9, T0 + 0.1, "closed")) == T0 + 0.1
    assert next_deadline(Closing(session, None, T0 + 9, None, "closed")) == retransmit


def test_drops_are_counted_by_reason_with_plain_lower_case_phrases() -> None:
    stats = Stats()
    stats.drop(DropReason.REPLAYED)
    stats.drop(DropReason.REPLAYED)
    stats.drop(DropReason.FAILED_AUTHENTICATION)
    assert stats.dropped == {DropReason.REPLAYED: 2, DropReason.FAILED_AUTHENTICATION: 1}
    phrases = [reason.value for reason in DropReason]
    assert len(set(phrases)) == len(phrases)
    assert all(p == p.lower() and p.strip() == p for p in phrases)
