"""Engine scenarios: packets in → packets and events out, against an in-memory server.

`MiniServer` (miniserver.py) plays a 2.6 UDP server's side of the control channel without
wrapping: its own reliable channel per key id, a pyOpenSSL server over memory BIOs, a
key-method-2 reply and a scripted PUSH_REPLY. Time is a plain float the tests move forward.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from miragevpn.client import Client
from miragevpn.config.model import Proto, Remote, Transport
from miragevpn.datachannel import PING_MAGIC
from miragevpn.errors import AuthFailed, DropReason, RemoteProtocolError
from miragevpn.events import (
    ConnectionRequested,
    ControlMessageReceived,
    DisconnectionRequested,
    ProgressReported,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TlsEstablished,
    TunnelEstablished,
)
from miragevpn.framing import encode_frame
from miragevpn.packet import ControlPacket, Opcode, decode_control, encode_control
from tests.helpers.pki import Pki
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

# --------------------------------------------------------------------------- scripts


def test_literal_remote_asks_for_a_connection_and_hostnames_for_resolution(pki: Pki) -> None:
    client = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    assert drain(client) == [
        ConnectionRequested(
            address=ipaddress.IPv4Address("192.0.2.1"), port=1194, transport=Transport.UDP
        )
    ]
    named = Client(
        make_config(pki, remotes=(Remote("vpn.example", 443, Proto(Transport.TCP)),)),
        rng=counter_rng(),
        now=T0,
        wall_clock=wall_clock,
    )
    event = named.next_event()
    assert isinstance(event, ResolutionRequested)
    assert event.host == "vpn.example"
    named.handle_resolved([ipaddress.IPv4Address("198.51.100.7")], now=T0)
    assert named.next_event() == ConnectionRequested(
        address=ipaddress.IPv4Address("198.51.100.7"), port=443, transport=Transport.TCP
    )


def test_remote_random_hostname_asks_to_resolve_a_randomised_name(pki: Pki) -> None:
    config = make_config(pki, remotes=(Remote("vpn.example", 443, Proto(Transport.TCP)),))
    client = Client(
        replace(config, remote_random_hostname=True),
        rng=lambda n: bytes(range(1, n + 1)),
        now=T0,
        wall_clock=wall_clock,
    )
    event = client.next_event()
    assert isinstance(event, ResolutionRequested)
    assert event.host == "010203040506.vpn.example"


def test_first_packet_is_a_hard_reset_and_the_answer_acks_the_server_reset(pki: Pki) -> None:
    client = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    drain(client)
    assert client.data_to_send(now=T0) == []  # nothing before the transport is up
    client.handle_connected(now=T0)
    [wire] = client.data_to_send(now=T0)
    reset = decode_control(wire)
    assert (reset.opcode, reset.key_id, reset.sequence_number, reset.acks) == (
        Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
        0,
        0,
        (),
    )
    assert reset.payload == b""
    assert client.data_to_send(now=T0) == []  # the ClientHello waits for the server's reset
    server_reset = ControlPacket(
        Opcode.P_CONTROL_HARD_RESET_SERVER_V2, 0, SERVER_SID, (0,), reset.session_id, 0
    )
    client.receive(encode_control(server_reset), now=T0 + 0.1)
    first, *_ = [decode_control(w) for w in client.data_to_send(now=T0 + 0.1)]
    assert first.opcode is Opcode.P_CONTROL_V1
    assert first.sequence_number == 1
    assert first.acks == (0,)  # the 2.6 HMAC-cookie server needs exactly this
    assert first.remote_session_id == SERVER_SID
    assert first.payload[:1] == b"\x16"  # a TLS handshake record


def test_handshake_push_reply_and_tunnel_settings(pki: Pki) -> None:
    _client, server, events = established(pki)
    kinds = [type(e) for e in events]
    assert kinds[:2] == [ConnectionRequested, ProgressReported]
    assert TlsEstablished in kinds
    assert server.texts[0] == "PUSH_REQUEST"
    [tunnel] = [e for e in events if isinstance(e, TunnelEstablished)]
    s = tunnel.settings
    assert str(s.ipv4) == "10.8.0.2/24"
    assert s.ipv4_peer is None
    assert [(str(r.network), str(r.gateway)) for r in s.routes] == [
        ("192.168.100.0/24", "10.8.0.1")
    ]
    assert s.cipher == "AES-256-GCM"
    assert s.key_derivation == "tls-ekm"
    assert s.remote_address == ipaddress.IPv4Address("192.0.2.1")
    assert [o.value for o in s.dhcp_options] == ["10.8.0.1"]


def test_data_round_trip_and_bad_packets_are_counted(pki: Pki) -> None:
    client, server, _ = established(pki)
    path = server.data_key()
    wire = client.encrypt_tunnel_packet(b"\x45" + b"x" * 40, now=T0 + 1)
    assert wire is not None
    assert wire[0] == 0x48 and wire[1:4] == b"\x00\x00\x07"  # P_DATA_V2, pushed peer-id 7
    assert path.decrypt(wire, T0 + 1) == b"\x45" + b"x" * 40
    reply = path.encrypt(b"\x45reply")
    client.receive(reply, now=T0 + 1)
    assert client.tunnel_packets() == [b"\x45reply"]
    client.receive(reply, now=T0 + 1)  # a replay
    client.receive(reply[:-1] + bytes([reply[-1] ^ 1]), now=T0 + 1)  # a forgery
    client.receive(b"\xff\x00", now=T0 + 1)  # garbage
    assert client.tunnel_packets() == []
    assert client.stats.dropped[DropReason.REPLAYED] == 1
    assert client.stats.dropped[DropReason.FAILED_AUTHENTICATION] == 1
    assert client.stats.dropped[DropReason.MALFORMED] == 1
    client.receive(path.encrypt(b"\x45again"), now=T0 + 2)  # the tunnel keeps working
    assert client.tunnel_packets() == [b"\x45again"]


def test_ping_when_silent_and_ping_restart(pki: Pki) -> None:
    client, server, _ = established(pki)
    path = server.data_key()
    timer = client.get_timer()
    assert timer is not None and timer <= T0 + 10
    client.handle_timer(now=T0 + 10)
    [ping] = client.data_to_send(now=T0 + 10)
    assert path.decrypt(ping, T0 + 10) == PING_MAGIC
    assert client.stats.pings_sent == 1
    client.handle_timer(now=T0 + 60)
    events = drain(client)
    assert [type(e) for e in events] == [DisconnectionRequested, SessionRestarting]
    assert "ping-restart" in events[0].reason  # type: ignore[union-attr]
    client.handle_timer(now=T0 + 70)
    assert isinstance(client.next_event(), ConnectionRequested)


def test_server_poll_timeout_then_retry(pki: Pki) -> None:
    client = Client(
        make_config(pki, server_poll_timeout=5.0), rng=counter_rng(), now=T0, wall_clock=wall_clock
    )
    drain(client)
    client.handle_connected(now=T0)
    client.data_to_send(now=T0)
    drain(client)
    assert client.get_timer() == T0 + 2.0  # the reset's retransmission comes first
    client.handle_timer(now=T0 + 5)
    events = drain(client)
    assert [type(e) for e in events] == [DisconnectionRequested, SessionRestarting]
    restarting = events[1]
    assert isinstance(restarting, SessionRestarting)
    assert restarting.retry_in == 1.0
    assert client.get_timer() == T0 + 6
    client.handle_timer(now=T0 + 6)
    assert isinstance(client.next_event(), ConnectionRequested)


def test_control_messages(pki: Pki) -> None:
    client, server, _ = established(pki)
    server.send_text("INFO,hello there")
    exchange(client, server, T0 + 1)
    assert drain(client) == [ControlMessageReceived(message="INFO,hello there")]
    server.send_text("RESTART,[N]server going down")
    exchange(client, server, T0 + 2)
    events = drain(client)
    assert isinstance(events[-1], SessionRestarting)
    assert "server going down" in events[-1].reason


def test_auth_failed_ends_the_session(pki: Pki) -> None:
    client = Client(make_config(pki), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply="AUTH_FAILED,bad password")
    exchange(client, server, T0)
    ended = drain(client)[-1]
    assert isinstance(ended, SessionEnded)
    assert isinstance(ended.error, AuthFailed) and not ended.error.temporary
    assert ended.error.reason == "bad password"
    assert "bad password" in ended.reason
    assert client.get_timer() is None


def test_halt_ends_and_pushed_foreign_cipher_restarts(pki: Pki) -> None:
    client, server, _ = established(pki)
    server.send_text("HALT,maintenance")
    exchange(client, server, T0 + 1)
    ended = drain(client)[-1]
    assert isinstance(ended, SessionEnded)
    assert isinstance(ended.error, RemoteProtocolError)

    client = Client(
        make_config(pki, data_ciphers=("AES-128-GCM",)),
        rng=counter_rng(),
        now=T0,
        wall_clock=wall_clock,
    )
    client.handle_connected(now=T0)
    exchange(client, MiniServer(pki), T0)
    restarting = drain(client)[-1]
    assert isinstance(restarting, SessionRestarting)
    assert "data-ciphers" in restarting.reason


def test_close_with_cc_exit_sends_exit_then_ends(pki: Pki) -> None:
    client, server, _ = established(pki)
    client.close(now=T0 + 1)
    exchange(client, server, T0 + 1)
    assert server.texts[-1] == "EXIT"
    client.handle_timer(now=T0 + 2)
    events = drain(client)
    assert isinstance(events[-1], SessionEnded)
    assert events[-1].error is None
    assert client.encrypt_tunnel_packet(b"\x45x", now=T0 + 3) is None


def test_hand_window_bounds_the_negotiation(pki: Pki) -> None:
    client = Client(
        make_config(pki, hand_window=10.0), rng=counter_rng(), now=T0, wall_clock=wall_clock
    )
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply="")  # never answers PUSH_REQUEST
    server.reply = "INFO,not yet"
    exchange(client, server, T0)
    client.handle_timer(now=T0 + 5)  # PUSH_REQUEST again after 5 s
    exchange(client, server, T0 + 5)
    assert server.texts.count("PUSH_REQUEST") == 2
    client.handle_timer(now=T0 + 10)
    assert isinstance(drain(client)[-1], SessionRestarting)


def test_tcp_broken_frame_restarts(pki: Pki) -> None:
    tcp = (Remote("192.0.2.1", 443, Proto(Transport.TCP)),)
    client = Client(make_config(pki, remotes=tcp), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    [framed] = client.data_to_send(now=T0)
    assert framed[:2] == len(framed[2:]).to_bytes(2, "big")
    drain(client)
    client.receive(encode_frame(b"\x40") + b"\x00\x00", now=T0)  # length 0: out of sync
    events = drain(client)
    assert [type(e) for e in events] == [DisconnectionRequested, SessionRestarting]
