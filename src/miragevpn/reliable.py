"""Control-channel reliability for one key state (reference §1.5, §1.6; OpenVPN `reliable.c`).

Send side: every message from `send()` gets the next sequence number (from 0, no gaps). At
most `SEND_WINDOW` (6) messages are in flight: a message goes out only while
`sequence_number - oldest_unacknowledged < 6`. A message is retransmitted `tls_timeout` after
its first transmission, then after twice that, four times, ... (the timeout doubles per
retransmission), or at once when 3 acks for higher sequence numbers arrived while it was
unacknowledged (fast retransmit). Acks are not cumulative: each acks exactly one message.
Giving up is the client's job (`hand-window`).

Receive side: a message with a sequence number below the next expected one is a replay: it is
acked again (that is how the peer learns to stop retransmitting) and dropped; one at or beyond
`next expected + RECEIVE_WINDOW` (12) is dropped without an ack; others are buffered and
acked, and payloads are delivered strictly in order. Duplicates are acked and ignored.

Acks: each packet we send carries the acks not yet sent (piggy-backed: at most 4 on a
sequenced packet; a P_ACK_V1 carries up to 8), the free slots filled with recently sent acks
(OpenVPN's ack MRU, `reliable_ack_write`), so a lost ack is repeated for free.
`packets_to_send` returns P_ACK_V1 packets only for fresh acks no sequenced packet carried.

Deadlines: `next_deadline()` is the earliest retransmission time; it is `0.0` ("already due")
while there is output waiting that the next `packets_to_send` call will produce (new messages
within the window, fresh acks, fast retransmits).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DropReason
from .packet import (
    ACK_V1_MAX_ACKS,
    CONTROL_MAX_ACKS,
    MAX_SEQUENCE_NUMBER,
    ControlPacket,
    Opcode,
)

__all__ = [
    "ACK_MRU_SIZE",
    "DEFAULT_TLS_MTU",
    "RECEIVE_WINDOW",
    "SEND_WINDOW",
    "ReliableChannel",
    "max_control_payload",
]

SEND_WINDOW = 6  # ssl_pkt.h: TLS_RELIABLE_N_SEND_BUFFERS
RECEIVE_WINDOW = 12  # ssl_pkt.h: TLS_RELIABLE_N_REC_BUFFERS
FAST_RETRANSMIT_ACKS = 3  # reliable.h: N_ACK_RETRANSMIT
ACK_MRU_SIZE = ACK_V1_MAX_ACKS  # reliable.h: the ack MRU holds RELIABLE_ACK_SIZE ids
DUE_NOW = 0.0  # next_deadline() when output is waiting for the next packets_to_send call
DEFAULT_TLS_MTU = 1250  # options.c: --tls-mtu default (whole IP datagram of a control packet)
_IP_UDP_OVERHEAD = {False: 28, True: 48}  # IPv4 + UDP, IPv6 + UDP (reference §1.7)


def max_control_payload(
    *, wrap_overhead: int, tls_mtu: int = DEFAULT_TLS_MTU, ipv6: bool = False, extra: int = 0
) -> int:
    """The largest TLS chunk for one P_CONTROL_V1 so that the IP datagram fits `tls_mtu`
    (reference §1.7): opcode, session id, 4 piggy-backed acks with the remote session id, the
    sequence number, the wrap's overhead and `extra` (e.g. a tls-crypt-v2 WKc)."""
    header = 1 + 8 + 1 + 4 * CONTROL_MAX_ACKS + 8 + 4
    budget = tls_mtu - _IP_UDP_OVERHEAD[ipv6] - header - wrap_overhead - extra
    if budget <= 0:
        raise ValueError("tls-mtu too small for a control packet")
    return budget


@dataclass(slots=True)
class _Outgoing:
    """One message of ours awaiting its ack."""

    sequence_number: int
    opcode: Opcode
    payload: bytes
    next_try: float | None = None  # None: never sent
    timeout: float = 0.0  # the wait after the next transmission
    higher_acks: int = 0  # acks for later messages seen since the last transmission
    transmissions: int = 0


class ReliableChannel:
    """Acks, retransmissions and in-order delivery of one key state's control messages."""

    def __init__(
        self,
        *,
        key_id: int,
        tls_timeout: float,
        ack_packet_max_acks: int = ACK_V1_MAX_ACKS,
    ) -> None:
        """`ack_packet_max_acks`: OpenVPN 2.6 lowers it to 4 without tls-auth/tls-crypt and
        without EKM (a workaround for SoftEther servers, ssl_pkt.c: write_control_auth)."""
        if tls_timeout <= 0:
            raise ValueError("tls_timeout must be positive")
        if not 1 <= ack_packet_max_acks <= ACK_V1_MAX_ACKS:
            raise ValueError("ack_packet_max_acks must be within 1..8")
        self.key_id = key_id
        self.tls_timeout = float(tls_timeout)
        self.ack_packet_max_acks = ack_packet_max_acks
        # send side
        self._my_next_sequence_number = 0
        self._outgoing: list[_Outgoing] = []  # unacked messages, in sequence order
        # receive side
        self._their_next_sequence_number = 0
        self._received: dict[int, tuple[Opcode, bytes]] = {}
        # acks
        self._fresh_acks: list[int] = []  # received, not yet acked, in arrival order
        self._ack_mru: list[int] = []  # recently acked, most recent first
        # statistics
        self.retransmissions = 0

    # ------------------------------------------------------------------ sending

    def send(self, opcode: Opcode, payload: bytes) -> None:
        """Queue one reliable message (a reset, or a chunk of TLS records)."""
        if opcode is Opcode.P_ACK_V1 or opcode in (Opcode.P_DATA_V1, Opcode.P_DATA_V2):
            raise ValueError(f"{opcode.name} is not a reliable message")
        if self._my_next_sequence_number > MAX_SEQUENCE_NUMBER:
            raise ValueError("sequence numbers exhausted for this key state")
        self._outgoing.append(_Outgoing(self._my_next_sequence_number, opcode, payload))
        self._my_next_sequence_number += 1

    @property
    def all_sent_acknowledged(self) -> bool:
        """True when every message given to `send` has been acknowledged."""
        return not self._outgoing

    @property
    def unacknowledged(self) -> int:
        """Messages sent or queued and not acknowledged yet."""
        return len(self._outgoing)

    @property
    def my_next_sequence_number(self) -> int:
        return self._my_next_sequence_number

    @property
    def their_next_sequence_number(self) -> int:
        """The sequence number of the next message we will deliver."""
        return self._their_next_sequence_number

    def _window(self) -> list[_Outgoing]:
        """The messages that may be on the wire: within SEND_WINDOW of the oldest unacked."""
        if not self._outgoing:
            return []
        limit = self._outgoing[0].sequence_number + SEND_WINDOW
        return [m for m in self._outgoing if m.sequence_number < limit]

    def _take_acks(self, limit: int, their_session_id: bytes | None) -> tuple[int, ...]:
        """Up to `limit` fresh acks, then recently sent ones; updates the MRU."""
        if their_session_id is None:
            return ()
        fresh = self._fresh_acks[:limit]
        del self._fresh_acks[:limit]
        acks = list(fresh)
        for old in self._ack_mru:
            if len(acks) >= limit:
                break
            if old not in acks:
                acks.append(old)
        mru = list(reversed(fresh)) + [a for a in self._ack_mru if a not in fresh]
        self._ack_mru = mru[:ACK_MRU_SIZE]
        return tuple(acks)

    def packets_to_send(
        self, now: float, *, my_session_id: bytes, their_session_id: bytes | None
    ) -> list[ControlPacket]:
        """The (re)transmissions due at `now`, with piggy-backed acks, then P_ACK_V1 packets
        for fresh acks nothing else carried. Acks need `their_session_id` (we echo it); until
        it is known they stay pending."""
        packets: list[ControlPacket] = []
        for message in self._window():
            due = (
                message.next_try is None
                or message.next_try <= now
                or message.higher_acks >= FAST_RETRANSMIT_ACKS
            )
            if not due:
                continue
            if message.next_try is None:
                message.timeout = self.tls_timeout
            else:
                self.retransmissions += 1
            message.next_try = now + message.timeout
            message.timeout *= 2
            message.higher_acks = 0
            message.transmissions += 1
            acks = self._take_acks(CONTROL_MAX_ACKS, their_session_id)
            packets.append(
                ControlPacket(
                    message.opcode,
                    self.key_id,
                    my_session_id,
                    acks,
                    their_session_id if acks else None,
                    message.sequence_number,
                    message.payload,
                )
            )
        while self._fresh_acks and their_session_id is not None:
            acks = self._take_acks(self.ack_packet_max_acks, their_session_id)
            packets.append(
                ControlPacket(
                    Opcode.P_ACK_V1, self.key_id, my_session_id, acks, their_session_id, None
                )
            )
        return packets

    def next_deadline(self) -> float | None:
        """When `packets_to_send` next has something to do; `DUE_NOW` (0.0) if it has now."""
        if self._fresh_acks:
            return DUE_NOW
        deadline: float | None = None
        for message in self._window():
            if message.next_try is None or message.higher_acks >= FAST_RETRANSMIT_ACKS:
                return DUE_NOW
            if deadline is None or message.next_try < deadline:
                deadline = message.next_try
        return deadline

    # ------------------------------------------------------------------ receiving

    def drop_reason(self, sequence_number: int) -> DropReason | None:
        """Why `receive` would not deliver a message with this sequence number, or None:
        DUPLICATE_CONTROL (received before, delivered or buffered: acked again) or
        BEYOND_RECEIVE_WINDOW (not acked)."""
        expected = self._their_next_sequence_number
        if sequence_number >= expected + RECEIVE_WINDOW:
            return DropReason.BEYOND_RECEIVE_WINDOW
        if sequence_number < expected or sequence_number in self._received:
            return DropReason.DUPLICATE_CONTROL
        return None

    def receive(self, packet: ControlPacket, now: float) -> list[tuple[Opcode, bytes]]:
        """Process a packet's acks; buffer and ack its message (if it has a sequence number);
        return the messages now deliverable, in order, as (opcode, payload).

        Session ids and key ids are the caller's business (checked before calling this)."""
        if packet.acks:
            self._process_acks(packet.acks)
        sequence_number = packet.sequence_number
        if sequence_number is None:
            return []
        expected = self._their_next_sequence_number
        if sequence_number >= expected + RECEIVE_WINDOW:
            return []  # beyond the receive window: no ack (reliable_wont_break_sequentiality)
        if sequence_number not in self._fresh_acks:
            self._fresh_acks.append(sequence_number)
        if sequence_number < expected or sequence_number in self._received:
            return []  # a replay or a duplicate: acked again, not delivered again
        self._received[sequence_number] = (packet.opcode, packet.payload)
        delivered: list[tuple[Opcode, bytes]] = []
        while expected in self._received:
            delivered.append(self._received.pop(expected))
            expected += 1
        self._their_next_sequence_number = expected
        return delivered

    def _process_acks(self, acks: tuple[int, ...]) -> None:
        """Drop acked messages; count acks for later messages (reliable.c: reliable_send_purge
        counts every such ack, re-sent ones included). Acks for ids we never sent (or that
        are long gone, e.g. re-sent from the peer's MRU) remove nothing."""
        outgoing = self._outgoing
        for ack in acks:
            for i, message in enumerate(outgoing):
                if message.sequence_number == ack:
                    if message.next_try is not None:
                        del outgoing[i]
                    break
            for message in outgoing:
                if message.sequence_number < ack and message.next_try is not None:
                    message.higher_acks += 1
