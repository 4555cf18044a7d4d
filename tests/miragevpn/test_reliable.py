"""reliable.py: acks, retransmission with back-off, fast retransmit, in-order delivery."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miragevpn.errors import DropReason
from miragevpn.packet import ControlPacket, Opcode, decode_control, encode_control
from miragevpn.reliable import (
    RECEIVE_WINDOW,
    SEND_WINDOW,
    ReliableChannel,
    max_control_payload,
)

ME = b"client00"
THEM = b"server00"
C = Opcode.P_CONTROL_V1


def peer_packet(seq: int | None, acks: tuple[int, ...] = (), payload: bytes = b"") -> ControlPacket:
    opcode = Opcode.P_ACK_V1 if seq is None else C
    return ControlPacket(opcode, 0, THEM, acks, ME if acks else None, seq, payload)


def out(ch: ReliableChannel, now: float) -> list[ControlPacket]:
    return ch.packets_to_send(now, my_session_id=ME, their_session_id=THEM)


def test_hard_reset_retransmits_with_doubling_timeout_until_acked() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    ch.send(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, b"")
    assert ch.next_deadline() == 0.0
    [first] = ch.packets_to_send(100.0, my_session_id=ME, their_session_id=None)
    assert (first.opcode, first.sequence_number, first.acks) == (
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
        0,
        (),
    )
    assert ch.next_deadline() == 102.0
    assert out(ch, 101.9) == []
    sent_at = [100.0]
    now = 100.0
    for _ in range(4):
        now = ch.next_deadline() or 0.0
        [again] = ch.packets_to_send(now, my_session_id=ME, their_session_id=None)
        assert again.sequence_number == 0
        sent_at.append(now)
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [2, 4, 8, 16]
    assert ch.retransmissions == 4
    assert not ch.all_sent_acknowledged
    # the server's reset acks it and brings its own sequence number 0
    delivered = ch.receive(
        ControlPacket(Opcode.P_CONTROL_HARD_RESET_SERVER_V2, 0, THEM, (0,), ME, 0), now
    )
    assert delivered == [(Opcode.P_CONTROL_HARD_RESET_SERVER_V2, b"")]
    assert ch.all_sent_acknowledged
    assert ch.next_deadline() == 0.0  # the ack is due
    [ack] = out(ch, now)
    assert ack == ControlPacket(Opcode.P_ACK_V1, 0, ME, (0,), THEM, None)
    assert ch.next_deadline() is None
    assert out(ch, now + 100) == []


def test_acks_piggyback_on_the_next_message() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    ch.send(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, b"")
    out(ch, 0.0)
    ch.receive(ControlPacket(Opcode.P_CONTROL_HARD_RESET_SERVER_V2, 0, THEM, (0,), ME, 0), 0.0)
    ch.send(C, b"client hello")
    [p] = out(ch, 0.0)  # the first packet after the server reset: acks 0, sequence number 1
    assert (p.opcode, p.sequence_number, p.acks, p.remote_session_id) == (C, 1, (0,), THEM)
    assert p.payload == b"client hello"


def test_send_window_of_six() -> None:
    ch = ReliableChannel(key_id=2, tls_timeout=2.0)
    for i in range(10):
        ch.send(C, bytes([i]))
    first = out(ch, 0.0)
    assert [p.sequence_number for p in first] == list(range(SEND_WINDOW))
    assert all(p.key_id == 2 for p in first)
    assert out(ch, 1.0) == []
    ch.receive(peer_packet(None, (1, 2)), 1.0)  # acks for 1, 2: the window still starts at 0
    assert out(ch, 1.0) == []
    ch.receive(peer_packet(None, (0,)), 1.0)  # now 3..8 may be on the wire
    assert [p.sequence_number for p in out(ch, 1.0)] == [6, 7, 8]
    assert ch.unacknowledged == 7


def test_fast_retransmit_after_three_higher_acks() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=10.0)
    for i in range(5):
        ch.send(C, bytes([i]))
    out(ch, 0.0)
    ch.receive(peer_packet(None, (1,)), 0.5)
    ch.receive(peer_packet(None, (2,)), 0.6)
    assert out(ch, 0.7) == []
    ch.receive(peer_packet(None, (3, 2)), 0.8)  # 3, and 2 again: 0 has now seen 4 higher acks
    assert ch.next_deadline() == 0.0
    assert [p.sequence_number for p in out(ch, 0.9)] == [0]
    assert ch.next_deadline() == 10.0  # 4 is due at 0 + 10; 0 again at 0.9 + 20


def test_receive_in_order_buffering_duplicates_and_replays() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    assert ch.receive(peer_packet(1, payload=b"b"), 0.0) == []
    assert ch.receive(peer_packet(2, payload=b"c"), 0.0) == []
    assert ch.receive(peer_packet(2, payload=b"c"), 0.0) == []  # duplicate
    assert ch.receive(peer_packet(0, payload=b"a"), 0.0) == [(C, b"a"), (C, b"b"), (C, b"c")]
    assert ch.their_next_sequence_number == 3
    [ack] = out(ch, 0.0)
    assert sorted(ack.acks) == [0, 1, 2]
    assert ch.receive(peer_packet(1, payload=b"b"), 1.0) == []  # a replay is acked again
    [ack] = out(ch, 1.0)
    assert ack.acks[0] == 1


def test_beyond_the_receive_window_is_dropped_without_ack() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    assert ch.receive(peer_packet(RECEIVE_WINDOW), 0.0) == []
    assert out(ch, 0.0) == []
    assert ch.next_deadline() is None
    assert ch.receive(peer_packet(RECEIVE_WINDOW - 1), 0.0) == []
    assert [p.acks for p in out(ch, 0.0)] == [(RECEIVE_WINDOW - 1,)]


def test_many_acks_split_into_several_ack_packets_and_mru_fill() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0, ack_packet_max_acks=4)
    for seq in range(10):
        ch.receive(peer_packet(seq), 0.0)
    packets = out(ch, 0.0)
    assert [p.acks for p in packets] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 7, 6)]
    ch.send(C, b"x")
    [p] = out(ch, 1.0)  # no fresh acks: recently sent ones are repeated
    assert p.acks == (9, 8, 7, 6)


def test_acks_wait_for_their_session_id() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    ch.receive(peer_packet(0), 0.0)
    assert ch.packets_to_send(0.0, my_session_id=ME, their_session_id=None) == []
    assert len(out(ch, 0.0)) == 1


def test_ack_for_unknown_ids_is_ignored() -> None:
    ch = ReliableChannel(key_id=0, tls_timeout=2.0)
    ch.send(C, b"a")
    ch.receive(peer_packet(None, (0,)), 0.0)  # acks a message not yet transmitted: ignored
    assert not ch.all_sent_acknowledged
    out(ch, 0.0)
    ch.receive(peer_packet(None, (77, 0)), 0.0)
    assert ch.all_sent_acknowledged


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReliableChannel(key_id=0, tls_timeout=0)
    ch = ReliableChannel(key_id=0, tls_timeout=1)
    with pytest.raises(ValueError):
        ch.send(Opcode.P_ACK_V1, b"")


@settings(max_examples=60)
@given(
    st.integers(1, 25),
    st.integers(1, 25),
    st.floats(0.0, 0.6),
    st.floats(0.0, 0.3),
    st.integers(0, 2**32 - 1),
)
def test_lossy_network_delivers_everything_in_order(
    n_a: int, n_b: int, loss: float, duplication: float, seed: int
) -> None:
    """Two channels over a network that drops, duplicates and reorders: both message streams
    arrive complete and in order, and both senders see all their messages acknowledged."""
    rnd = random.Random(seed)
    a = ReliableChannel(key_id=0, tls_timeout=1.0)
    b = ReliableChannel(key_id=0, tls_timeout=1.0)
    sids = {id(a): (b"aaaaaaaa", b"bbbbbbbb"), id(b): (b"bbbbbbbb", b"aaaaaaaa")}
    sent = {
        id(a): [bytes([i]) * 3 for i in range(n_a)],
        id(b): [bytes([i]) * 5 for i in range(n_b)],
    }
    for ch in (a, b):
        for msg in sent[id(ch)]:
            ch.send(C, msg)
    got: dict[int, list[bytes]] = {id(a): [], id(b): []}
    in_flight: list[tuple[float, ReliableChannel, bytes]] = []
    now = 0.0
    for _ in range(3000):
        for src, dst in ((a, b), (b, a)):
            mine, theirs = sids[id(src)]
            for p in src.packets_to_send(now, my_session_id=mine, their_session_id=theirs):
                wire = encode_control(p)
                copies = 0 if rnd.random() < loss else 1 + (rnd.random() < duplication)
                for _ in range(copies):
                    in_flight.append((now + rnd.uniform(0.01, 0.5), dst, wire))
        in_flight.sort(key=lambda item: item[0])
        deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        candidates = [t for t in [*deadlines, in_flight[0][0] if in_flight else None] if t]
        if not candidates:
            break
        now = max(now, min(candidates))
        while in_flight and in_flight[0][0] <= now:
            _, dst, wire = in_flight.pop(0)
            for _, payload in dst.receive(decode_control(wire), now):
                got[id(dst)].append(payload)
        done = got[id(b)] == sent[id(a)] and got[id(a)] == sent[id(b)]
        if done and a.all_sent_acknowledged and b.all_sent_acknowledged and not in_flight:
            break
    assert got[id(b)] == sent[id(a)]
    assert got[id(a)] == sent[id(b)]
    assert a.all_sent_acknowledged and b.all_sent_acknowledged


def test_max_control_payload_fits_tls_mtu() -> None:
    budget = max_control_payload(wrap_overhead=40)  # tls-crypt, IPv4
    p = ControlPacket(C, 0, ME, (1, 2, 3, 4), THEM, 9, bytes(budget))
    assert 28 + len(encode_control(p)) + 40 == 1250
    assert max_control_payload(wrap_overhead=28, ipv6=True) == budget + 40 - 28 - 20
    with pytest.raises(ValueError):
        max_control_payload(wrap_overhead=40, tls_mtu=100)


def test_drop_reason_says_what_receive_would_not_deliver() -> None:
    channel = ReliableChannel(key_id=0, tls_timeout=2.0)
    assert channel.drop_reason(0) is None
    channel.receive(peer_packet(0, payload=b"a"), 0.0)
    channel.receive(peer_packet(2, payload=b"c"), 0.0)  # buffered, out of order
    assert channel.drop_reason(0) is DropReason.DUPLICATE_CONTROL  # delivered
    assert channel.drop_reason(2) is DropReason.DUPLICATE_CONTROL  # buffered
    assert channel.drop_reason(1) is None
    assert channel.drop_reason(1 + RECEIVE_WINDOW) is DropReason.BEYOND_RECEIVE_WINDOW
