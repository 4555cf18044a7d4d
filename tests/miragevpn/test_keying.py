"""SessionKeys scenarios: a session's key states, data keys and renegotiation against the
in-memory server (miniserver.py), without the client around them.

Each step returns what happened (`KeysReceived`, `KeysTimer`, a key id); the tests read those
outcomes and never poll flags.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest

from miragevpn.config.model import (
    AuthUserPass,
    Compression,
    ReplayWindow,
    Secret,
    StaticKey,
    TlsAuth,
    Transport,
)
from miragevpn.datachannel import PING_MAGIC
from miragevpn.datakeys import DataChannelParams, DataKeys
from miragevpn.errors import DropReason, LocalProtocolError
from miragevpn.keying import (
    SOFTETHER_MAX_ACKS,
    Keying,
    KeysReceived,
    next_key_id,
    reneg_seconds,
)
from miragevpn.packet import ACK_V1_MAX_ACKS, Opcode, decode_control, encode_control
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import SERVER_SID, MiniServer
from tests.miragevpn.scenario import T0, counter_rng, make_config

SERVER = ipaddress.IPv4Address("192.0.2.1")
PARAMS = DataChannelParams.create(
    cipher="AES-256-GCM",
    compression=Compression.NONE,
    peer_id=7,
    replay_window=ReplayWindow(),
    ekm=True,
)


def key_ids(pair: Pair) -> set[int]:
    return {key_state.key_id for key_state in pair.keys.key_states()}


class Pair:
    """A session's keys and the server, shuttling control packets (bounded rounds)."""

    def __init__(
        self, pki: Pki, credentials: AuthUserPass | None = None, **changes: object
    ) -> None:
        self.keying = Keying(
            make_config(pki, **changes), rng=counter_rng(), credentials=credentials, tls_ekm=True
        )
        self.session = self.keying.new_session(SERVER, 1194, Transport.UDP, T0)
        self.keys = self.session.keys
        self.server = MiniServer(pki)
        self.their_session_id: bytes | None = None

    def exchange(self, now: float, *, may_renegotiate: bool = True) -> list[KeysReceived]:
        results = []
        for _ in range(30):
            moved = False
            for key_state in list(self.keys.key_states()):
                for packet in key_state.reliable.packets_to_send(
                    now,
                    my_session_id=self.session.my_session_id,
                    their_session_id=self.their_session_id,
                ):
                    self.server.receive(encode_control(packet), now)
                    moved = True
            for wire in self.server.to_send(now):
                self.their_session_id = SERVER_SID
                results.append(
                    self.keys.receive(
                        decode_control(wire),
                        now,
                        their_session_id=SERVER_SID,
                        may_renegotiate=may_renegotiate,
                    )
                )
                moved = True
            if not moved:
                return results
        raise AssertionError("the exchange did not settle")

    def established(self, now: float = T0) -> DataKeys:
        self.exchange(now)
        return self.keys.start_data(PARAMS, their_session_id=SERVER_SID, now=now)


def test_the_first_negotiation_reports_tls_then_key_method_2_once_each(pki: Pki) -> None:
    pair = Pair(pki)
    assert key_ids(pair) == {0} and not pair.keys.first_handshake_complete
    results = pair.exchange(T0)
    tls = [r.tls for r in results if r.tls is not None]
    firsts = [i for i, r in enumerate(results) if r.first_negotiated]
    assert len(tls) == 1 and tls[0].version.startswith("TLSv1.")
    assert tls[0].peer_subject.endswith("CN=server") or "server" in tls[0].peer_subject
    assert len(firsts) == 1
    first_tls = next(i for i, r in enumerate(results) if r.tls is not None)
    assert first_tls <= firsts[0]  # the handshake completes before the key exchange does
    assert all(r.dropped is None and r.began is None for r in results)
    assert pair.keys.first_handshake_complete and pair.keys.data is None
    assert pair.keys.data_deadline() is None  # no data keys, no key timers


def test_data_keys_of_key_id_0_match_the_server(pki: Pki) -> None:
    pair = Pair(pki)
    data = pair.established()
    assert pair.keys.data is data and data.key_ids == {0}
    server = pair.server.data_key(0)
    assert server.decrypt(data.encrypt_ping() or b"", T0) == PING_MAGIC
    inbound = server.encrypt(b"\x45" + b"y" * 30)
    key = data.by_key_id[inbound[0] & 7]
    assert key is not None and key.decrypt(inbound, T0) == b"\x45" + b"y" * 30
    with pytest.raises(LocalProtocolError):  # our bug, not the server's
        pair.keys.start_data(PARAMS, their_session_id=SERVER_SID, now=T0)


def test_the_servers_soft_reset_renegotiates_and_the_lame_duck_dies(pki: Pki) -> None:
    pair = Pair(pki, reneg_sec=0.0, hand_window=60.0, tran_window=100.0)
    data = pair.established()
    now = T0 + 10
    pair.server.soft_reset(1)
    results = pair.exchange(now)
    assert [r.began for r in results if r.began is not None] == [1]
    assert [r.renegotiated for r in results if r.renegotiated is not None] == [1]
    assert not any(r.first_negotiated for r in results)
    assert key_ids(pair) == {0, 1}
    assert data.key_ids == {0, 1}
    old = data.by_key_id[0]
    assert data.send_key is old  # we keep sending with the lame duck for hand-window
    assert pair.keys.data_deadline() == now + 60.0  # the send switch
    assert pair.keys.handle_timer(now + 59.9).expired is None and data.send_key is old
    assert pair.keys.handle_timer(now + 60.0).expired is None
    assert data.send_key is data.by_key_id[1]
    assert pair.keys.data_deadline() == now + 100.0  # the lame duck's death (tran-window)
    timer = pair.keys.handle_timer(now + 100.0)
    assert timer.expired == 0 and timer.began is None and not timer.timed_out
    assert key_ids(pair) == {1} and data.key_ids == {1}
    # the new keys are the server's key id 1, and the next renegotiation may begin
    assert pair.server.data_key(1).decrypt(data.encrypt_ping() or b"", now) == PING_MAGIC
    pair.server.soft_reset(2)
    results = pair.exchange(now + 200)
    assert [(r.began, r.renegotiated) for r in results if r.began or r.renegotiated] == [
        (2, None),
        (None, 2),
    ]


@pytest.mark.parametrize(
    ("key_id", "may_renegotiate"), [(3, True), (1, False)], ids=["out of sequence", "not now"]
)
def test_a_soft_reset_we_cannot_take_is_dropped(
    pki: Pki, key_id: int, may_renegotiate: bool
) -> None:
    pair = Pair(pki)
    pair.established()
    pair.server.soft_reset(key_id)
    results = pair.exchange(T0 + 1, may_renegotiate=may_renegotiate)
    assert results and {r.dropped for r in results} == {DropReason.UNKNOWN_KEY_ID}
    assert key_ids(pair) == {0}  # no key state began


def test_our_packet_trigger_begins_once_and_hand_window_ends_it(pki: Pki) -> None:
    pair = Pair(pki, reneg_pkts=3, hand_window=30.0)
    data = pair.established()
    assert pair.keys.maybe_renegotiate(T0 + 1) is None
    for _ in range(3):
        data.encrypt_ping()
    assert pair.keys.maybe_renegotiate(T0 + 2) == 1 == next_key_id(0)
    assert pair.keys.maybe_renegotiate(T0 + 3) is None  # one at a time
    assert key_ids(pair) == {0, 1}
    assert data.send_key is data.by_key_id[0]  # the lame duck sends until the new key exists
    [soft_reset] = list(pair.keys.key_states())[1].reliable.packets_to_send(
        T0 + 2, my_session_id=pair.session.my_session_id, their_session_id=SERVER_SID
    )
    assert soft_reset.opcode is Opcode.P_CONTROL_SOFT_RESET_V1 and soft_reset.key_id == 1
    assert pair.keys.data_deadline() == T0 + 2 + 30.0
    assert not pair.keys.handle_timer(T0 + 31.9).timed_out
    assert pair.keys.handle_timer(T0 + 32.0).timed_out


def test_reneg_sec_counts_from_when_the_key_became_active(pki: Pki) -> None:
    pair = Pair(pki, reneg_sec=50.0)
    pair.established(T0 + 5)
    assert pair.keys.data_deadline() == T0 + 55.0
    timer = pair.keys.handle_timer(T0 + 55.0)
    assert timer.began == 1 and timer.expired is None


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.mark.parametrize(("most", "least"), [(12.0, 8.0), (3600.0, 3240.0), (60.0, 0.0)])
def test_reneg_sec_max_min_picks_whole_seconds_above_min_up_to_max(
    pki: Pki, most: float, least: float
) -> None:
    """init.c: reneg = max - (random mod (max - min)), so min+1..max, every value reachable."""
    config = make_config(pki, reneg_sec=most, reneg_sec_min=least)
    picks = [reneg_seconds(config, seeded_rng(seed)) for seed in range(4000)]
    assert all(p is not None and p == int(p) and least < p <= most for p in picks)
    if most - least <= 60:
        assert set(picks) == {float(s) for s in range(int(least) + 1, int(most) + 1)}
    assert reneg_seconds(config, seeded_rng(7)) == reneg_seconds(config, seeded_rng(7))


@pytest.mark.parametrize(
    ("most", "least", "expected"),
    [
        (50.0, None, 50.0),  # a client without min: max exactly (no automatic jitter)
        (50.0, 50.0, 50.0),
        (50.0, 80.0, 50.0),  # min above max: max
        (None, 30.0, None),  # reneg-sec 0 with a min: still off
        (None, None, None),
    ],
)
def test_reneg_sec_without_a_window(
    pki: Pki, most: float | None, least: float | None, expected: float | None
) -> None:
    config = make_config(pki, reneg_sec=most, reneg_sec_min=least)
    assert reneg_seconds(config, seeded_rng(1)) == expected


def test_each_session_draws_its_reneg_sec_from_the_rng(pki: Pki) -> None:
    config = make_config(pki, reneg_sec=100.0, reneg_sec_min=40.0)
    keying = Keying(config, rng=seeded_rng(3), credentials=None, tls_ekm=True)
    sessions = [keying.new_session(SERVER, 1194, Transport.UDP, T0) for _ in range(30)]
    values = {session.keys.reneg_sec for session in sessions}
    assert len(values) > 10 and all(v is not None and 40 < v <= 100 for v in values)
    pair = Pair(pki, reneg_sec=100.0, reneg_sec_min=40.0)
    chosen = pair.keys.reneg_sec
    assert chosen is not None and 40 < chosen <= 100
    pair.established(T0 + 5)
    assert pair.keys.data_deadline() == T0 + 5 + chosen  # the trigger uses the session's value
    assert pair.keys.handle_timer(T0 + 5 + chosen - 0.5).began is None
    assert pair.keys.handle_timer(T0 + 5 + chosen).began == 1


def test_a_renegotiation_sends_the_pushed_auth_token(pki: Pki) -> None:
    credentials = AuthUserPass(username="alice", password=Secret(b"secret-pw"))
    pair = Pair(pki, credentials)
    pair.established()
    first = pair.server.client_key_methods[0]
    assert b"alice\0" in first and b"secret-pw\0" in first
    pair.keying.use_auth_token(Secret(b"tok-123"), "bob")
    pair.server.soft_reset(1)
    pair.exchange(T0 + 1)
    second = pair.server.client_key_methods[1]
    assert b"bob\0" in second and b"tok-123\0" in second and b"secret-pw" not in second
    pair.keying.forget_auth_token()
    pair.server.soft_reset(2)
    pair.keys.handle_timer(T0 + 60.0)  # lets the send switch happen; nothing expires yet
    pair.exchange(T0 + 61)
    third = pair.server.client_key_methods[2]
    assert b"bob\0" in third and b"secret-pw\0" in third and b"tok-123" not in third


def test_ack_packets_carry_at_most_4_acks_without_control_channel_wrapping(pki: Pki) -> None:
    """OpenVPN 2.6's SoftEther workaround: SoftEther refuses a P_ACK_V1 with more than 4 acks
    (and then drops the session over the PUSH_REPLY it thinks unacknowledged)."""
    plain = Pair(pki)
    [key_state] = plain.keys.key_states()
    assert key_state.reliable.ack_packet_max_acks == SOFTETHER_MAX_ACKS == 4
    wrapped = Pair(pki, tls_protection=TlsAuth(StaticKey(Secret(bytes(256)))))
    [key_state] = wrapped.keys.key_states()
    assert key_state.reliable.ack_packet_max_acks == ACK_V1_MAX_ACKS


def test_auth_nocache_drops_the_password_once_a_token_replaces_it(pki: Pki) -> None:
    credentials = AuthUserPass(username="alice", password=Secret(b"secret-pw"))
    pair = Pair(pki, credentials, auth_nocache=True)
    pair.established()
    assert not pair.keying.tunnel_authenticated()  # no token yet: the password is kept
    assert not pair.keying.password_dropped
    pair.keying.use_auth_token(Secret(b"tok-123"), None)
    assert pair.keying.tunnel_authenticated() and pair.keying.password_dropped
    assert not pair.keying.tunnel_authenticated()  # once
    pair.server.soft_reset(1)
    pair.exchange(T0 + 1)
    second = pair.server.client_key_methods[1]
    assert b"alice\0" in second and b"tok-123\0" in second and b"secret-pw" not in second
    # without auth-nocache the password stays for an expired token to fall back on
    kept = Pair(pki, credentials)
    kept.keying.use_auth_token(Secret(b"tok-123"), None)
    assert not kept.keying.tunnel_authenticated() and not kept.keying.password_dropped
