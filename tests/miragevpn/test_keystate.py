"""One key state against the in-memory server: its phases, what each packet completed
(`Received`), control text framing, and the server's mistakes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from miragevpn.config.model import AllowCompression, Compression, Transport
from miragevpn.errors import DecodeError, RemoteProtocolError
from miragevpn.keymethod import MAX_KEY_METHOD_2_MESSAGE
from miragevpn.keystate import (
    AwaitingReset,
    KeyState,
    Negotiated,
    Received,
    TlsHandshake,
    client_key_method_2,
)
from miragevpn.messages import encode_control_message
from miragevpn.packet import ControlPacket, Opcode, decode_control, encode_control
from miragevpn.tls import TlsSession, TlsSettings
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import SERVER_KEY_METHOD_2, SERVER_SID, MiniServer
from tests.miragevpn.scenario import T0, counter_rng, make_config

MY_SID = bytes.fromhex("0102030405060708")


def new_key_state(pki: Pki) -> KeyState:
    config = make_config(pki)
    message, source = client_key_method_2(
        config, counter_rng(), Transport.UDP, username=None, password=None, tls_ekm=True
    )
    return KeyState(
        key_id=0,
        tls=TlsSession(TlsSettings.from_config(config)),
        reset_opcode=Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
        my_key_method=message,
        key_source=source,
        tls_timeout=2.0,
        payload_size=1250,
        wkc_overhead=0,
        started=T0,
    )


def outgoing(key_state: KeyState, their: bytes | None = SERVER_SID) -> list[ControlPacket]:
    return key_state.reliable.packets_to_send(T0, my_session_id=MY_SID, their_session_id=their)


def shuttle(key_state: KeyState, server: MiniServer, rounds: int = 30) -> list[Received]:
    results = []
    for _ in range(rounds):
        moved = False
        for packet in outgoing(key_state):
            server.receive(encode_control(packet), T0)
            moved = True
        for wire in server.to_send(T0):
            results.append(key_state.receive(decode_control(wire), T0))
            moved = True
        if not moved:
            return results
    raise AssertionError("the exchange did not settle")


def test_the_client_hello_waits_for_the_servers_reset(pki: Pki) -> None:
    key_state = new_key_state(pki)
    assert isinstance(key_state.phase, AwaitingReset)
    [reset] = outgoing(key_state, None)
    assert reset.opcode is Opcode.P_CONTROL_HARD_RESET_CLIENT_V2 and reset.payload == b""
    assert outgoing(key_state, None) == []  # nothing else until the server answers
    server = MiniServer(pki)
    server.receive(encode_control(reset), T0)
    [server_reset] = [decode_control(w) for w in server.to_send(T0)]
    received = key_state.receive(server_reset, T0)
    assert received == Received()  # nothing completed yet
    assert isinstance(key_state.phase, TlsHandshake)
    hello = [p for p in outgoing(key_state) if p.opcode is Opcode.P_CONTROL_V1]
    assert hello and hello[0].payload[0] == 0x16  # a TLS handshake record


def test_each_step_is_reported_once_by_the_packet_that_completed_it(pki: Pki) -> None:
    key_state, server = new_key_state(pki), MiniServer(pki)
    results = shuttle(key_state, server)
    assert sum(r.tls_completed for r in results) == 1
    assert sum(r.negotiated for r in results) == 1
    tls_at = next(i for i, r in enumerate(results) if r.tls_completed)
    negotiated_at = next(i for i, r in enumerate(results) if r.negotiated)
    assert tls_at < negotiated_at  # our key-method-2 goes out after the handshake, theirs later
    assert isinstance(key_state.phase, Negotiated) and key_state.is_negotiated
    assert key_state.their_key_method.random1 == SERVER_KEY_METHOD_2[5:37]
    # control text both ways, on the negotiated key state
    key_state.send_text(encode_control_message("PUSH_REQUEST"))
    results = shuttle(key_state, server)
    assert "PUSH_REQUEST" in server.texts
    messages = [m for r in results for m in r.messages]
    assert len(messages) == 1 and messages[0].startswith("PUSH_REPLY,")
    assert not any(r.tls_completed or r.negotiated for r in results)


def test_a_message_split_over_packets_comes_out_whole_and_once(pki: Pki) -> None:
    key_state, server = new_key_state(pki), MiniServer(pki)
    shuttle(key_state, server)
    long = "INFO," + "x" * 2500  # the server chops its TLS bytes into 1000-byte packets
    server.send_text(long)
    server.send_text("INFO,second")
    results = shuttle(key_state, server)
    assert [m for r in results for m in r.messages] == [long, "INFO,second"]
    assert len([r for r in results if r.messages]) <= 2


def test_tls_records_before_the_servers_reset_break_the_rules(pki: Pki) -> None:
    key_state = new_key_state(pki)
    early = ControlPacket(
        opcode=Opcode.P_CONTROL_V1,
        key_id=0,
        session_id=SERVER_SID,
        acks=(),
        remote_session_id=None,
        sequence_number=0,
        payload=b"\x16\x03\x01\x00\x00",
    )
    with pytest.raises(RemoteProtocolError, match="before the server's reset"):
        key_state.receive(early, T0)


def test_an_endless_server_key_method_2_is_refused(pki: Pki) -> None:
    # header, randoms, then an options string that claims 65535 bytes and never ends
    endless = SERVER_KEY_METHOD_2[:69] + b"\xff\xff" + b"A" * (MAX_KEY_METHOD_2_MESSAGE + 10)
    key_state, server = new_key_state(pki), MiniServer(pki, key_method_2=endless)
    with pytest.raises(DecodeError, match="too long"):
        shuttle(key_state, server)


def test_client_key_method_2_announces_decompression_only_when_allowed(pki: Pki) -> None:
    def peer_info(**changes: object) -> str:
        config = replace(make_config(pki), **changes)  # type: ignore[arg-type]
        message, _ = client_key_method_2(
            config, counter_rng(), Transport.UDP, username=None, password=None, tls_ekm=True
        )
        return message.decode("latin-1")

    assert "IV_LZ4" not in peer_info() and "IV_LZO_STUB=1" in peer_info()
    asym = peer_info(compression=Compression.LZ4_V2, allow_compression=AllowCompression.ASYM)
    assert "IV_LZ4=1\nIV_LZ4v2=1\nIV_LZO=1\nIV_COMP_STUB=1" in asym
    assert "IV_LZO_STUB" not in asym
    stub = peer_info(compression=Compression.STUB_V2, allow_compression=AllowCompression.YES)
    assert "IV_LZ4" not in stub  # a configured stub: 2.6 advertises stubs only
