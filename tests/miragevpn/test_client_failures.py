"""Engine scenarios of things going wrong, and the reasons the client gives for them.

A lost transport (in every state that has one), the server's TLS alert, a wrong tls-auth key,
duplicate and corrupted control packets without control-channel protection, and the wire
counters. Same conventions as test_client.py: MiniServer, a float clock, packets in → out.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from miragevpn.client import Client
from miragevpn.config.keys import parse_static_key
from miragevpn.config.model import (
    AddressFamily,
    KeyDirection,
    Proto,
    Remote,
    TlsAuth,
    TlsVersion,
    Transport,
)
from miragevpn.errors import DropReason, ServerCertificateRejected
from miragevpn.events import (
    ConnectionRequested,
    DisconnectionRequested,
    Event,
    ProgressReported,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TlsEstablished,
)
from miragevpn.framing import StreamDecoder, encode_frame
from miragevpn.packet import ControlPacket, Opcode, decode_control, encode_control
from miragevpn.tls_wrap import TlsAuthWrap
from tests.helpers.pki import Pki, make_ca
from tests.miragevpn.miniserver import SERVER_SID, MiniServer
from tests.miragevpn.scenario import (
    T0,
    counter_rng,
    drain,
    established,
    exchange,
    make_config,
    wall_clock,
)

TCP = (Remote("192.0.2.1", 443, Proto(Transport.TCP)),)


def tcp_exchange(client: Client, server: MiniServer, now: float, rounds: int = 20) -> None:
    """`exchange` over TCP: the client frames, the (datagram) MiniServer does not."""
    decoder = StreamDecoder()
    for _ in range(rounds):
        moved = False
        for chunk in client.data_to_send(now=now):
            for wire in decoder.feed(chunk):
                server.receive(wire, now)
            moved = True
        for wire in server.to_send(now):
            client.receive(encode_frame(wire), now=now)
            moved = True
        if not moved:
            return


def restarting(events: list[Event]) -> SessionRestarting:
    assert [type(e) for e in events[-2:]] == [DisconnectionRequested, SessionRestarting], events
    last = events[-1]
    assert isinstance(last, SessionRestarting)
    return last


# --------------------------------------------------------------------------- lost transport


def test_tcp_close_after_the_tls_handshake_says_the_certificate_was_probably_refused(
    pki: Pki,
) -> None:
    """OpenVPN 2.6 over TCP refuses our certificate by closing the connection, no alert: the
    client restarts at once (not at hand-window) and says what probably happened."""
    client = Client(make_config(pki, remotes=TCP), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki, client_ca=pki.wrong_ca.cert, send_alerts=False)
    tcp_exchange(client, server, T0)
    assert server.tls_errors  # the server refused our certificate
    assert any(isinstance(e, TlsEstablished) for e in drain(client))
    client.handle_connection_lost(now=T0 + 0.1)
    reason = restarting(drain(client)).reason
    assert "closed after the TLS handshake" in reason
    assert "rejected our certificate" in reason
    assert client.get_timer() == T0 + 0.1 + 1.0  # connect-retry, not hand-window


def test_tcp_close_ends_the_session_when_retries_are_exhausted(pki: Pki) -> None:
    client = Client(
        make_config(pki, remotes=TCP, connect_retry_max=1),
        rng=counter_rng(),
        now=T0,
        wall_clock=wall_clock,
    )
    client.handle_connected(now=T0)
    drain(client)
    client.handle_connection_failed(now=T0 + 1)  # the runtime's existing call works too
    events = drain(client)
    assert [type(e) for e in events] == [DisconnectionRequested, SessionEnded]
    ended = events[-1]
    assert isinstance(ended, SessionEnded)
    assert "closed before it answered our reset" in ended.reason
    assert "connect-retry-max" in ended.reason


def test_a_lost_transport_restarts_an_established_session_at_once(pki: Pki) -> None:
    client, _server, _ = established(pki)
    client.handle_connection_lost(now=T0 + 1)
    assert restarting(drain(client)).reason == "the connection to the server was closed"
    client.handle_timer(now=T0 + 2)
    assert [type(e).__name__ for e in drain(client)] == ["ConnectionRequested"]


def test_a_lost_transport_while_closing_ends_and_elsewhere_is_ignored(pki: Pki) -> None:
    client, server, _ = established(pki)
    client.close(now=T0 + 1)
    exchange(client, server, T0 + 1)
    client.handle_connection_lost(now=T0 + 1.5)
    events = drain(client)
    assert isinstance(events[-1], SessionEnded) and events[-1].reason == "closed"
    client.handle_connection_lost(now=T0 + 2)  # Ended: nothing more
    assert drain(client) == []

    waiting = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    waiting.handle_connected(now=T0)
    waiting.handle_connection_lost(now=T0)
    drain(waiting)
    waiting.handle_connection_lost(now=T0 + 0.5)  # Waiting: no transport, nothing happens
    assert drain(waiting) == []


# --------------------------------------------------------------------------- TLS alerts


def test_the_servers_tls_alert_is_the_reason_in_plain_words(pki: Pki) -> None:
    for version_max in (None, TlsVersion.TLS1_2):  # alert after / during our handshake
        client = Client(
            make_config(pki, tls_version_max=version_max),
            rng=counter_rng(),
            now=T0,
            wall_clock=wall_clock,
        )
        client.handle_connected(now=T0)
        server = MiniServer(pki, client_ca=pki.wrong_ca.cert)
        exchange(client, server, T0)
        reason = restarting(drain(client)).reason
        assert reason == "the server rejected our certificate (TLS alert: unknown CA)"


# --------------------------------------------------------------------------- tls-auth keys


def tls_auth_config(pki: Pki) -> TlsAuth:
    return TlsAuth(parse_static_key(pki.ta_key.encode(), "tls-auth"), KeyDirection.INVERSE)


def server_reset_wrapped_with(key_text: str, client_sid: bytes, replay_id: int) -> bytes:
    wrap = TlsAuthWrap(
        parse_static_key(key_text.encode(), "tls-auth"),
        KeyDirection.NORMAL,
        "SHA1",
        next_replay_id=replay_id,
    )
    reset = ControlPacket(Opcode.P_CONTROL_HARD_RESET_SERVER_V2, 0, SERVER_SID, (0,), client_sid, 0)
    return wrap.wrap(reset, T0)


def test_handshake_timeout_says_how_many_packets_failed_tls_auth(pki: Pki) -> None:
    config = make_config(pki, tls_protection=tls_auth_config(pki), server_poll_timeout=5.0)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    [ours] = client.data_to_send(now=T0)
    client_sid = ours[1:9]
    for n in range(3):
        client.receive(server_reset_wrapped_with(pki.wrong_ta_key, client_sid, n + 1), now=T0 + 1)
    assert client.stats.dropped[DropReason.FAILED_AUTHENTICATION] == 3
    drain(client)
    client.handle_timer(now=T0 + 5)
    reason = restarting(drain(client)).reason
    assert reason.startswith("no answer from the server (server-poll-timeout): ")
    assert reason.endswith(
        "3 packets from the server failed tls-auth authentication: are the tls-auth key and "
        "key-direction the same as the server's?"
    )


def test_handshake_timeout_without_failed_packets_says_nothing_about_keys(pki: Pki) -> None:
    config = make_config(pki, tls_protection=tls_auth_config(pki), server_poll_timeout=5.0)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    [ours] = client.data_to_send(now=T0)
    client.receive(server_reset_wrapped_with(pki.ta_key, ours[1:9], 1), now=T0 + 1)  # the right key
    client.receive(server_reset_wrapped_with(pki.wrong_ta_key, ours[1:9], 2), now=T0 + 1)
    drain(client)
    client.handle_timer(now=T0 + 60)  # hand-window; the server answered, so keys are not the issue
    reason = restarting(drain(client)).reason
    assert reason == "TLS negotiation did not finish within hand-window"


# --------------------------------------------------------------------------- counters


def test_wire_counters_include_data_packets_both_ways(pki: Pki) -> None:
    client, server, _ = established(pki)
    stats = client.stats
    before = (stats.packets_sent, stats.bytes_sent, stats.packets_received, stats.bytes_received)
    wire = client.encrypt_tunnel_packet(b"\x45" + b"x" * 40, now=T0 + 1)
    assert wire is not None
    reply = server.data_key().encrypt(b"\x45reply")
    client.receive(reply, now=T0 + 1)
    assert (
        stats.packets_sent,
        stats.bytes_sent,
        stats.packets_received,
        stats.bytes_received,
    ) == (before[0] + 1, before[1] + len(wire), before[2] + 1, before[3] + len(reply))


def test_tcp_counters_count_frames_not_stream_chunks(pki: Pki) -> None:
    client = Client(make_config(pki, remotes=TCP), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    [framed] = client.data_to_send(now=T0)
    assert (client.stats.packets_sent, client.stats.bytes_sent) == (1, len(framed) - 2)
    sid = decode_control(framed[2:]).session_id
    ack = ControlPacket(Opcode.P_ACK_V1, 0, SERVER_SID, (0,), sid, None)
    wire = encode_control(ack)
    client.receive(encode_frame(wire) * 2, now=T0)  # two frames in one chunk
    assert (client.stats.packets_received, client.stats.bytes_received) == (2, 2 * len(wire))


# --------------------------------------------------------------------------- control packets


def test_duplicate_control_packets_are_counted_and_acked_again(pki: Pki) -> None:
    client, server, _ = established(pki)  # no tls-auth/tls-crypt: replays reach the channel
    server.send_text("INFO,once")
    [wire] = server.to_send(T0 + 1)
    client.receive(wire, now=T0 + 1)
    client.data_to_send(now=T0 + 1)  # the ack
    client.receive(wire, now=T0 + 2)  # the same packet again
    assert client.stats.dropped[DropReason.DUPLICATE_CONTROL] == 1
    acks = [decode_control(w) for w in client.data_to_send(now=T0 + 2)]
    assert [(a.opcode, a.acks[:1]) for a in acks] == [
        (Opcode.P_ACK_V1, (decode_control(wire).sequence_number,))
    ]
    assert [getattr(e, "message", None) for e in drain(client)] == ["INFO,once"]


def test_a_control_packet_beyond_the_receive_window_is_counted(pki: Pki) -> None:
    client, server, _ = established(pki)
    server.send_text("INFO,far ahead")
    [wire] = server.to_send(T0 + 1)
    packet = decode_control(wire)
    assert packet.sequence_number is not None
    far = packet.sequence_number + 12  # RECEIVE_WINDOW ahead: e.g. a flipped sequence number
    client.receive(encode_control(dataclasses.replace(packet, sequence_number=far)), now=T0 + 1)
    assert client.stats.dropped[DropReason.BEYOND_RECEIVE_WINDOW] == 1
    assert client.data_to_send(now=T0 + 1) == []  # not acked
    client.receive(wire, now=T0 + 1)  # the real one still works
    assert [getattr(e, "message", None) for e in drain(client)] == ["INFO,far ahead"]


def test_a_corrupted_control_packet_that_breaks_tls_restarts_with_a_reason(pki: Pki) -> None:
    client, server, _ = established(pki)
    server.send_text("INFO,corrupted on the way")
    [wire] = server.to_send(T0 + 1)
    client.receive(wire[:-1] + bytes([wire[-1] ^ 0x01]), now=T0 + 1)  # a flipped TLS record byte
    reason = restarting(drain(client)).reason
    assert reason.startswith("control channel failed: TLS failure: ")
    assert "mac" in reason.lower() or "decrypt" in reason.lower()


def test_auth_pending_extends_the_hand_window_by_whatever_timeout_it_carries(pki: Pki) -> None:
    """The client applies control's ExtendHandWindow to its Pulling deadline: never shorter
    than hand-window, as long as the (possibly capped) timeout says."""
    client = Client(
        make_config(pki, hand_window=10.0), rng=counter_rng(), now=T0, wall_clock=wall_clock
    )
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply="AUTH_PENDING,timeout 30")
    exchange(client, server, T0)
    assert ProgressReported(message="authentication pending") in drain(client)
    assert client.get_timer() == T0 + 5  # the next PUSH_REQUEST, not the end
    client.handle_timer(now=T0 + 10)  # hand-window alone would have ended the attempt here
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))
    server.reply = "AUTH_PENDING,timeout 1"  # a shorter timeout never shortens the window
    exchange(client, server, T0 + 10)
    client.handle_timer(now=T0 + 29.9)
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))
    client.handle_timer(now=T0 + 30)
    [*_, restarting] = drain(client)
    assert isinstance(restarting, SessionRestarting)
    assert restarting.reason == "no PUSH_REPLY within hand-window"


def test_our_refusal_of_the_servers_certificate_is_ours_in_words(pki: Pki) -> None:
    """A server certificate not signed by our CA: the session ends with our rejection, never
    worded as the server refusing anything."""
    config = make_config(pki, ca=make_ca("another CA").cert_pem)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    exchange(client, MiniServer(pki), T0)
    ended = drain(client)[-1]
    assert isinstance(ended, SessionEnded)
    assert isinstance(ended.error, ServerCertificateRejected)
    assert ended.reason == (
        "we rejected the server's certificate: server certificate not signed by the configured CA"
    )
    assert "server rejected" not in ended.reason


def test_auth_failed_temp_restarts_instead_of_ending(pki: Pki) -> None:
    client = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    exchange(client, MiniServer(pki, reply="AUTH_FAILED,TEMP: try later"), T0)
    restarting = drain(client)[-1]
    assert isinstance(restarting, SessionRestarting)
    assert restarting.reason == (
        "temporary authentication failure: the server refused our credentials for now "
        "(AUTH_FAILED,TEMP: try later)"
    )


# --------------------------------------------------------------------------- dual-stack names

DUAL = (Remote("vpn.example", 1194, Proto(Transport.UDP)),)
V6 = ipaddress.IPv6Address("2001:db8::1")
V4 = ipaddress.IPv4Address("192.0.2.1")


def connect_target(events: list[Event]) -> ConnectionRequested:
    requests = [e for e in events if isinstance(e, ConnectionRequested)]
    assert len(requests) == 1, events
    return requests[0]


def test_a_dual_stack_name_falls_back_to_the_next_family_when_the_first_cannot_connect(
    pki: Pki,
) -> None:
    """`proto udp` + a name with AAAA and A: the resolver's first address (IPv6 here) first;
    a failed connect (ENETUNREACH) moves to the IPv4 address of the same remote."""
    config = make_config(pki, remotes=DUAL)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    resolution = [e for e in drain(client) if isinstance(e, ResolutionRequested)]
    assert [(r.host, r.family) for r in resolution] == [("vpn.example", AddressFamily.ANY)]
    client.handle_resolved([V6, V4], now=T0)
    assert connect_target(drain(client)).address == V6
    client.handle_connection_failed(now=T0 + 0.1)
    drain(client)
    client.handle_timer(now=T0 + 5)
    assert connect_target(drain(client)).address == V4  # no new lookup: the next address


def test_a_silent_first_address_gives_way_after_server_poll_timeout(pki: Pki) -> None:
    """UDP "connects" at once; a first address that never answers our reset is left when
    server-poll-timeout runs out, for the next address (IPv4 first this time)."""
    config = make_config(pki, remotes=DUAL, server_poll_timeout=4.0)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    drain(client)
    client.handle_resolved([V4, V6], now=T0)
    assert connect_target(drain(client)).address == V4
    client.handle_connected(now=T0)
    for step in range(1, 60):  # bounded: the poll timeout is 4 s, the retry pause 1 s
        deadline = client.get_timer()
        assert deadline is not None
        client.handle_timer(now=deadline)
        client.data_to_send(now=deadline)
        events = drain(client)
        if any(isinstance(e, ConnectionRequested) for e in events):
            assert connect_target(events).address == V6
            assert deadline - T0 < 4.0 + 1.0 + 0.01 * step
            return
    raise AssertionError("the next address was never tried")
