"""Renegotiation (reference §8) at engine level, against the in-memory server.

Scripts: the server's soft reset; our own on reneg-sec / reneg-pkts / reneg-bytes; which key
we send with (OpenVPN's auth_deferred_expire rule); the lame duck's death at tran-window; the
key id wrap 1..7, 1; a renegotiation that never finishes.
"""

from __future__ import annotations

from miragevpn.client import Client
from miragevpn.datachannel import PING_MAGIC
from miragevpn.errors import DropReason
from miragevpn.events import ProgressReported, SessionRestarting
from miragevpn.packet import Opcode, decode_control, encode_control
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import MiniServer
from tests.miragevpn.scenario import (
    T0,
    counter_rng,
    drain,
    exchange,
    make_config,
    wall_clock,
)


def established(pki: Pki, **changes: object) -> tuple[Client, MiniServer]:
    client = Client(make_config(pki, **changes), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki)
    exchange(client, server, T0)
    drain(client)
    assert client.encrypt_tunnel_packet(b"\x45", now=T0) is not None
    return client, server


def tick(client: Client, server: MiniServer, now: float) -> None:
    """The server's keepalive arrives, the client's timer fires if due, packets go both ways."""
    for wire in server.keepalive():
        client.receive(wire, now=now)
    timer = client.get_timer()
    if timer is not None and timer <= now:
        client.handle_timer(now=now)
    exchange(client, server, now)


def sent_key_id(client: Client, now: float) -> int:
    wire = client.encrypt_tunnel_packet(b"\x45probe", now=now)
    assert wire is not None
    return wire[0] & 7


def round_trip(client: Client, server: MiniServer, key_id: int, now: float) -> None:
    """The server's data on `key_id` reaches the tunnel; ours decrypts on the key we chose."""
    server_key = server.data_key(key_id)
    client.receive(server_key.encrypt(b"\x45from-server"), now=now)
    assert client.tunnel_packets() == [b"\x45from-server"]


def test_server_soft_reset_new_keys_and_the_deferred_send_switch(pki: Pki) -> None:
    client, server = established(pki, hand_window=20.0, reneg_sec=None, tran_window=100.0)
    server.soft_reset(1)
    exchange(client, server, T0 + 1)
    assert server.negotiated(1)
    events = drain(client)
    assert ProgressReported(message="server renegotiates keys (key id 1)") in events
    assert ProgressReported(message="new data keys (key id 1)") in events
    assert client.stats.renegotiations == 1
    round_trip(client, server, 1, T0 + 2)  # receiving on the new key at once
    round_trip(client, server, 0, T0 + 2)  # and on the lame duck
    # Sending stays on key id 0 until start + min(hand-window, reneg-sec/2) = T0 + 1 + 20.
    assert sent_key_id(client, T0 + 2) == 0
    assert client.get_timer() == T0 + 12  # the ping (10 s after our last packet) comes first
    tick(client, server, T0 + 20.5)
    assert sent_key_id(client, T0 + 20.5) == 0
    tick(client, server, T0 + 21)
    wire = client.encrypt_tunnel_packet(b"\x45new", now=T0 + 21)
    assert wire is not None and wire[0] & 7 == 1
    assert server.data_key(1).decrypt(wire, T0 + 21) == b"\x45new"
    # The lame duck dies at soft reset + tran-window.
    tick(client, server, T0 + 101)
    assert ProgressReported(message="lame-duck key (key id 0) expired (tran-window)") in drain(
        client
    )
    client.receive(server.data_key(0).encrypt(b"\x45late"), now=T0 + 101)
    assert client.tunnel_packets() == []
    assert client.stats.dropped[DropReason.UNKNOWN_KEY_ID] == 1


def test_a_soft_reset_for_a_key_id_out_of_sequence_is_dropped(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=None)
    for key_id in (2, 7):  # the next key id is 1 (ssl.c: key IDs out of sync otherwise)
        server.soft_reset(key_id)
        exchange(client, server, T0 + 1)
        assert not server.negotiated(key_id)
        del server.keys[key_id]
    assert client.stats.dropped[DropReason.UNKNOWN_KEY_ID] >= 2
    assert client.stats.renegotiations == 0
    server.soft_reset(1)
    exchange(client, server, T0 + 2)
    assert server.negotiated(1) and client.stats.renegotiations == 1


def test_send_switch_waits_min_of_hand_window_and_half_reneg_sec(pki: Pki) -> None:
    client, server = established(pki, hand_window=60.0, reneg_sec=None)
    server.soft_reset(1)
    exchange(client, server, T0 + 1)
    tick(client, server, T0 + 60)
    assert sent_key_id(client, T0 + 60) == 0
    tick(client, server, T0 + 61)  # hand-window after the soft reset
    assert sent_key_id(client, T0 + 61) == 1
    client, server = established(pki, hand_window=60.0, reneg_sec=30.0)
    server.soft_reset(1)
    exchange(client, server, T0 + 1)
    tick(client, server, T0 + 15)
    assert sent_key_id(client, T0 + 15) == 0
    tick(client, server, T0 + 16)  # reneg-sec / 2 after the soft reset
    assert sent_key_id(client, T0 + 16) == 1


def test_client_renegotiates_on_reneg_sec(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=100.0, hand_window=10.0)
    assert client.get_timer() == T0 + 10  # ping
    tick(client, server, T0 + 99)
    assert server.client_soft_resets == []
    client.handle_timer(now=T0 + 100)
    [reset] = [decode_control(w) for w in client.data_to_send(now=T0 + 100)]
    assert (reset.opcode, reset.key_id, reset.sequence_number) == (
        Opcode.P_CONTROL_SOFT_RESET_V1,
        1,
        0,
    )
    server.receive(encode_control(reset), T0 + 100)
    exchange(client, server, T0 + 100)
    assert server.client_soft_resets == [1] and server.negotiated(1)
    assert client.stats.renegotiations == 1
    assert ProgressReported(message="we renegotiate keys (key id 1)") in drain(client)
    # The next one counts from the moment key id 1 became active.
    tick(client, server, T0 + 199)
    assert server.client_soft_resets == [1]
    tick(client, server, T0 + 200)
    assert server.client_soft_resets == [1, 2]


def test_client_renegotiates_on_reneg_pkts_and_reneg_bytes(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=None, reneg_pkts=10)
    server_key = server.data_key(0)
    for _ in range(4):  # one packet was sent by established(); both directions count
        assert client.encrypt_tunnel_packet(b"\x45out", now=T0 + 1) is not None
    for _ in range(4):
        client.receive(server_key.encrypt(b"\x45in"), now=T0 + 1)
    assert client.get_timer() == T0 + 11  # 9 packets: not yet (the ping is next)
    client.receive(server_key.encrypt(b"\x45in"), now=T0 + 1)
    assert client.get_timer() == 0.0  # due now
    exchange(client, server, T0 + 1)
    assert server.client_soft_resets == [1] and server.negotiated(1)

    client, server = established(pki, reneg_sec=None, reneg_bytes=1000)
    client.encrypt_tunnel_packet(b"\x45" * 998, now=T0 + 1)
    assert client.get_timer() == T0 + 11
    client.encrypt_tunnel_packet(b"\x45", now=T0 + 1)
    assert client.get_timer() == 0.0
    exchange(client, server, T0 + 1)
    assert server.client_soft_resets == [1]


def test_key_ids_wrap_from_7_to_1(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=30.0, hand_window=10.0, tran_window=40.0)
    now = T0
    for expected in [1, 2, 3, 4, 5, 6, 7, 1, 2]:
        now += 30.0
        tick(client, server, now)
        assert server.client_soft_resets[-1] == expected
        assert server.negotiated(expected)
        round_trip(client, server, expected, now + 1)
        tick(client, server, now + 6)  # min(hand-window, reneg-sec/2) = 10 s after the start
        assert sent_key_id(client, now + 6) != expected
        tick(client, server, now + 10)
        wire = client.encrypt_tunnel_packet(b"\x45x", now=now + 10)
        assert wire is not None and wire[0] & 7 == expected
        assert server.data_key(expected).decrypt(wire, now + 10) == b"\x45x"
        server.keys = {k: v for k, v in server.keys.items() if k == expected}  # forget old ones
    assert server.client_soft_resets == [1, 2, 3, 4, 5, 6, 7, 1, 2]
    assert client.stats.renegotiations == 9
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))


def test_renegotiation_that_does_not_finish_within_hand_window_restarts(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=None, hand_window=10.0)
    server.soft_reset(1)
    for wire in server.to_send(T0 + 1):  # the soft reset reaches the client; nothing more
        client.receive(wire, now=T0 + 1)
    client.data_to_send(now=T0 + 1)
    drain(client)
    timer = client.get_timer()
    assert timer is not None and timer < T0 + 11  # retransmissions, the ping, then the deadline
    client.handle_timer(now=T0 + 10.9)
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))
    client.handle_timer(now=T0 + 11)
    events = drain(client)
    assert isinstance(events[-1], SessionRestarting)
    assert "hand-window" in events[-1].reason


def test_ping_goes_on_the_send_key(pki: Pki) -> None:
    client, server = established(pki, reneg_sec=None, hand_window=5.0)
    server.soft_reset(1)
    exchange(client, server, T0 + 1)
    tick(client, server, T0 + 6)
    [ping] = [
        w for w in client.data_to_send(now=T0 + 16) if w[0] >> 3 == int(Opcode.P_DATA_V2)
    ] or [None]
    assert ping is not None and ping[0] & 7 == 1
    assert server.data_key(1).decrypt(ping, T0 + 16) == PING_MAGIC
