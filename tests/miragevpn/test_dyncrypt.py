"""dyncrypt.py: the dynamic tls-crypt key (OpenVPN's known answer), the key-id switch, and
the engine renegotiating under it against the in-memory server."""

from __future__ import annotations

import pytest

from miragevpn.client import Client
from miragevpn.config.model import (
    KeyDirection,
    ReplayWindow,
    Secret,
    StaticKey,
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
)
from miragevpn.control import DYNAMIC_TLS_CRYPT_NOTE
from miragevpn.dyncrypt import SessionWrap, dynamic_tls_crypt_key
from miragevpn.errors import AuthenticationError, DropReason
from miragevpn.events import ProgressReported
from miragevpn.packet import ControlPacket, Opcode, decode_control
from miragevpn.reliable import DEFAULT_TLS_MTU
from miragevpn.tls_wrap import (
    TLS_CRYPT_OVERHEAD,
    PlainWrap,
    TlsCryptWrap,
    static_key_slices,
    tls_crypt_seal,
)
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import REPLY, SERVER_SID, MiniServer
from tests.miragevpn.scenario import T0, counter_rng, drain, exchange, make_config, wall_clock

KEY_A = StaticKey(Secret(bytes(range(256))))
KEY_B = StaticKey(Secret(bytes((7 * i + 3) % 256 for i in range(256))))
DYN_REPLY = REPLY.replace("tls-ekm", "tls-ekm dyn-tls-crypt")
CLIENT_SID = bytes.fromhex("c1c1c1c1c1c1c1c1")


def soft_reset(key_id: int, session_id: bytes = CLIENT_SID) -> ControlPacket:
    return ControlPacket(
        opcode=Opcode.P_CONTROL_SOFT_RESET_V1,
        key_id=key_id,
        session_id=session_id,
        acks=(),
        remote_session_id=None,
        sequence_number=0,
        payload=b"",
    )


# --------------------------------------------------------------------------- the key


def test_openvpn_known_answer_secure_reneg_key() -> None:
    """tests/unit_tests/openvpn/test_tls_crypt.c (2.6.14) test_tls_crypt_secure_reneg_key: the
    exporter mocked to 0xba bytes, the client's side, replay id 1 at time 0, "1234567890";
    the same without wrapping and with an all-zero original key, another with 0x42 bytes."""
    expected = bytes.fromhex(
        "0000000100000000"
        "e319277f1c8d6e6a7796a855337b9cfb56e1f13a870e6647dfa195c92c17a015"
        "ba4967a11d55ea1a06a7"
    )
    ekm = b"\xba" * 256

    def wrapped(key: StaticKey) -> bytes:
        out_slot, _ = static_key_slices(key, KeyDirection.INVERSE)  # the client's send slot
        clear = bytes.fromhex("0000000100000000")
        sealed = tls_crypt_seal(
            cipher_key=out_slot[:32], auth_key=out_slot[64:96], clear=clear, plaintext=b"1234567890"
        )
        return clear + sealed

    assert wrapped(dynamic_tls_crypt_key(ekm, None)) == expected
    zero = TlsCrypt(StaticKey(Secret(bytes(256))))
    assert wrapped(dynamic_tls_crypt_key(ekm, zero)) == expected
    other = wrapped(dynamic_tls_crypt_key(ekm, TlsCrypt(StaticKey(Secret(b"\x42" * 256)))))
    assert other[:8] == expected[:8]
    assert other[8:] != expected[8:]


@pytest.mark.parametrize(
    "protection",
    [
        TlsCrypt(KEY_A),
        TlsCryptV2(KEY_A, wrapped_key=b"\x00" * 10 + b"\x00\x0c"),  # Kc is what counts
        TlsAuth(KEY_A, KeyDirection.INVERSE),  # the whole file, whatever the key direction
        TlsAuth(KEY_A, None),
    ],
    ids=["tls-crypt", "tls-crypt-v2", "tls-auth-1", "tls-auth-bidirectional"],
)
def test_the_key_is_the_exporter_output_xor_the_whole_original_key(
    protection: TlsCrypt | TlsCryptV2 | TlsAuth,
) -> None:
    ekm = KEY_B.key.value
    key = dynamic_tls_crypt_key(ekm, protection).key.value
    assert key == bytes(a ^ b for a, b in zip(ekm, range(256), strict=True))
    assert dynamic_tls_crypt_key(ekm, None).key.value == ekm  # no wrapping: nothing to XOR


def test_the_exporter_output_must_be_256_bytes() -> None:
    with pytest.raises(ValueError, match="256"):
        dynamic_tls_crypt_key(b"\x01" * 255, None)


# --------------------------------------------------------------------------- the switch


def test_key_id_0_keeps_the_configured_wrap_and_later_ids_switch_once_made() -> None:
    wrap = SessionWrap(TlsCryptWrap(KEY_A))
    server_static = TlsCryptWrap(KEY_A, direction=KeyDirection.NORMAL)
    before = wrap.wrap(soft_reset(1), 1000.0)
    assert server_static.unwrap(before, 0.0).key_id == 1  # no dynamic key yet: configured
    wrap.use_dynamic(KEY_B, replay_window=ReplayWindow())
    server_dynamic = TlsCryptWrap(KEY_B, direction=KeyDirection.NORMAL)

    kid1 = wrap.wrap(soft_reset(1), 1000.0)
    assert kid1[9:17] == bytes.fromhex("00000001") + (1000).to_bytes(4, "big")  # its own counter
    assert server_dynamic.unwrap(kid1, 0.0).opcode is Opcode.P_CONTROL_SOFT_RESET_V1
    with pytest.raises(AuthenticationError):
        server_static.unwrap(wrap.wrap(soft_reset(2), 1000.0), 0.0)

    kid0 = wrap.wrap(soft_reset(0), 1000.0)
    assert kid0[9:13] == bytes.fromhex("00000002")  # the configured counter goes on
    assert server_static.unwrap(kid0, 0.0).key_id == 0


def test_received_packets_are_routed_by_their_key_id() -> None:
    wrap = SessionWrap(TlsCryptWrap(KEY_A))
    server_static = TlsCryptWrap(KEY_A, direction=KeyDirection.NORMAL)
    server_dynamic = TlsCryptWrap(KEY_B, direction=KeyDirection.NORMAL)
    static_kid1 = server_static.wrap(soft_reset(1, SERVER_SID), 1000.0)
    assert wrap.unwrap(static_kid1, 0.0).key_id == 1  # before the switch: accepted
    wrap.use_dynamic(KEY_B, replay_window=ReplayWindow())
    again = server_static.wrap(soft_reset(1, SERVER_SID), 1000.0)  # a fresh replay id
    with pytest.raises(AuthenticationError):  # the point of it: the static key no longer works
        wrap.unwrap(again, 0.0)
    assert wrap.unwrap(server_dynamic.wrap(soft_reset(1, SERVER_SID), 1000.0), 0.0).key_id == 1
    assert wrap.unwrap(server_static.wrap(soft_reset(0, SERVER_SID), 1000.0), 0.0).key_id == 0
    with pytest.raises(AuthenticationError):
        wrap.unwrap(server_dynamic.wrap(soft_reset(0, SERVER_SID), 1000.0), 0.0)


def test_without_wrapping_renegotiations_get_tls_crypt_and_its_overhead() -> None:
    wrap = SessionWrap(PlainWrap())
    assert wrap.for_key_id(1).overhead == 0
    wrap.use_dynamic(KEY_B, replay_window=ReplayWindow())
    assert wrap.overhead == wrap.for_key_id(0).overhead == 0
    assert wrap.for_key_id(3).overhead == TLS_CRYPT_OVERHEAD
    assert decode_control(wrap.wrap(soft_reset(0), 1.0)).key_id == 0  # plain
    server = TlsCryptWrap(KEY_B, direction=KeyDirection.NORMAL)
    assert server.unwrap(wrap.wrap(soft_reset(7), 1.0), 0.0).key_id == 7


def test_the_dynamic_key_is_made_once() -> None:
    wrap = SessionWrap(PlainWrap())
    wrap.use_dynamic(KEY_B, replay_window=ReplayWindow())
    with pytest.raises(ValueError, match="once"):
        wrap.use_dynamic(KEY_A, replay_window=ReplayWindow())


# --------------------------------------------------------------------------- the engine


def connect(
    pki: Pki, *, tls_crypt: TlsCrypt | None, dynamic: bool, tls_ekm: bool = True
) -> tuple[Client, MiniServer, list[object]]:
    config = make_config(pki, tls_protection=tls_crypt, hand_window=10.0, reneg_sec=None)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock, tls_ekm=tls_ekm)
    client.handle_connected(now=T0)
    server = MiniServer(
        pki,
        reply=DYN_REPLY if dynamic else REPLY,
        tls_crypt=tls_crypt,
        dynamic_tls_crypt=dynamic,
    )
    exchange(client, server, T0)
    events = list(drain(client))
    assert client.encrypt_tunnel_packet(b"\x45", now=T0) is not None, events
    return client, server, events


def test_the_client_announces_iv_proto_bit_9_with_ekm(pki: Pki) -> None:
    _, server, _ = connect(pki, tls_crypt=None, dynamic=False)
    assert b"IV_PROTO=654\n" in server.client_key_methods[0]  # 2 | 4 | 8 | 128 | 512
    _, server, _ = connect(pki, tls_crypt=None, dynamic=False, tls_ekm=False)
    assert b"IV_PROTO=134\n" in server.client_key_methods[0]  # neither EKM nor bit 9


@pytest.mark.parametrize("wrapped", [True, False], ids=["tls-crypt", "no-wrapping"])
def test_the_servers_renegotiation_under_the_dynamic_key(pki: Pki, wrapped: bool) -> None:
    tls_crypt = TlsCrypt(KEY_A) if wrapped else None
    client, server, events = connect(pki, tls_crypt=tls_crypt, dynamic=True)
    assert ProgressReported(message=DYNAMIC_TLS_CRYPT_NOTE) in events
    assert server.dynamic_wrap is not None
    for key_id in (1, 2):
        server.soft_reset(key_id)
        exchange(client, server, T0 + key_id)
        assert server.negotiated(key_id)
        assert client.stats.renegotiations == key_id
    assert server.unwrap_failures == []
    assert client.stats.dropped == {}
    # the client's packets of a later key id: the configured wrap cannot read them, the
    # server's dynamic wrap can (its tag checks out)
    server.soft_reset(3)
    for wire in server.to_send(T0 + 3):
        client.receive(wire, now=T0 + 3)
    kid3 = [w for w in client.data_to_send(now=T0 + 3) if w[0] & 7 == 3]
    assert kid3
    for wire in kid3:
        if wrapped:
            with pytest.raises(AuthenticationError):
                server.wrap.unwrap(wire, T0 + 3)
        server.receive(wire, T0 + 3)
    assert server.unwrap_failures == []
    exchange(client, server, T0 + 3)
    assert server.negotiated(3) and client.stats.renegotiations == 3


def test_without_wrapping_only_renegotiation_packets_carry_tls_crypt(pki: Pki) -> None:
    """Without configured wrapping, key id 0's packets are plain and key id 1's carry the 40
    bytes of tls-crypt (replay id, time, tag), its TLS records cut 40 bytes shorter so that no
    control packet outgrows tls-mtu (the IPv6 + UDP datagram)."""
    config = make_config(pki, tls_protection=None, hand_window=10.0, reneg_sec=None)
    client = Client(config, rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply=DYN_REPLY, dynamic_tls_crypt=True)
    sizes: dict[int, list[int]] = {0: [], 1: []}

    def shuttle(now: float) -> None:
        for _ in range(20):
            wires = client.data_to_send(now=now)
            for wire in wires:
                if wire[0] >> 3 == Opcode.P_CONTROL_V1:
                    sizes[wire[0] & 7].append(len(wire))
                server.receive(wire, now)
            replies = server.to_send(now)
            for wire in replies:
                client.receive(wire, now=now)
            if not wires and not replies:
                return

    shuttle(T0)
    assert client.encrypt_tunnel_packet(b"\x45", now=T0) is not None
    server.soft_reset(1)
    shuttle(T0 + 1)
    assert client.stats.renegotiations == 1
    wire_limit = DEFAULT_TLS_MTU - 48
    assert all(size <= wire_limit for size in sizes[0] + sizes[1]), sizes
    # The ClientHello: 40 bytes more when it fits one packet (315 -> 355 with Debian 12's
    # OpenSSL); cut to the same full packet when not (a post-quantum key share: 1190, 1190)
    first, again = sizes[0][0], sizes[1][0]
    assert again == first + TLS_CRYPT_OVERHEAD or again == first > wire_limit - 40, sizes


def test_a_renegotiation_under_the_static_key_is_dropped_once_the_dynamic_key_exists(
    pki: Pki,
) -> None:
    client, server, _ = connect(pki, tls_crypt=TlsCrypt(KEY_A), dynamic=True)
    forged = server.wrap.wrap(soft_reset(1, SERVER_SID), 1_800_000_100.0)  # the static key
    client.receive(forged, now=T0 + 1)
    assert client.stats.dropped == {DropReason.of(AuthenticationError("x")): 1}
    assert client.stats.renegotiations == 0
    assert not [w for w in client.data_to_send(now=T0 + 1) if w[0] & 7 == 1]  # nothing began
    # the same soft reset under the dynamic key begins the renegotiation
    client.receive(server.wrapped(soft_reset(1, SERVER_SID)), now=T0 + 2)
    assert [w for w in client.data_to_send(now=T0 + 2) if w[0] & 7 == 1]


def test_without_the_pushed_flag_renegotiations_keep_the_configured_wrap(pki: Pki) -> None:
    client, server, events = connect(pki, tls_crypt=TlsCrypt(KEY_A), dynamic=False)
    assert ProgressReported(message=DYNAMIC_TLS_CRYPT_NOTE) not in events
    client.receive(server.wrap.wrap(soft_reset(1, SERVER_SID), 1_800_000_100.0), now=T0 + 1)
    assert client.stats.dropped == {}
    server.soft_reset(1)
    exchange(client, server, T0 + 1)
    assert server.negotiated(1) and client.stats.renegotiations == 1
