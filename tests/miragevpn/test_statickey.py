"""statickey.py: static-key data packets (reference §6.4) decoded by hand, key directions, the
long-form replay id, and the StaticKeyClient as a script (events in, packets out)."""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import struct
from collections.abc import Callable

import lzo
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from miragevpn.config import parse_config
from miragevpn.config.model import (
    AllowCompression,
    Compression,
    Config,
    IfConfig,
    KeyDirection,
    Proto,
    Remote,
    ReplayWindow,
    Secret,
    StaticKey,
    Transport,
)
from miragevpn.datachannel import OCC_EXIT_MESSAGE, PING_MAGIC
from miragevpn.errors import AuthenticationError, ConfigError, DropReason, ReplayError
from miragevpn.events import (
    ConnectionRequested,
    DisconnectionRequested,
    Event,
    ProgressReported,
    SessionEnded,
    SessionRestarting,
    TunnelEstablished,
)
from miragevpn.framing import StreamDecoder, encode_frame
from miragevpn.statickey import STATIC_KEY_WARNING, StaticKeyChannel, StaticKeyClient
from tests.helpers.pki import Pki

KEY = StaticKey(Secret(bytes((i * 13 + 5) % 256 for i in range(256))))
NOW = 100.0
WALL = 1_700_000_000


def rng_counter() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: bytes([next(counter) % 256]) * n


def channel(
    direction: KeyDirection | None, *, time: int = WALL, cipher: str = "AES-256-CBC"
) -> StaticKeyChannel:
    return StaticKeyChannel(
        cipher=cipher,
        auth="SHA256",
        key=KEY,
        direction=direction,
        compression=Compression.NONE,
        replay_window=ReplayWindow(),
        rng=rng_counter(),
        time=time,
    )


def test_packet_has_no_opcode_and_a_long_form_id_inside() -> None:
    ours = channel(KeyDirection.INVERSE)  # `secret f 1`: send with keys[1]
    packet = ours.encrypt(b"\x45payload")
    raw = KEY.key.value
    cipher_key, hmac_key = raw[128:160], raw[192:224]
    mac, iv, ciphertext = packet[:32], packet[32:48], packet[48:]
    assert hmac.compare_digest(mac, hmac.digest(hmac_key, iv + ciphertext, "sha256"))
    decryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(decryptor.update(ciphertext) + decryptor.finalize())
    plain += unpadder.finalize()
    # test_packet_id.c: the first long-form id is 00000001 followed by the time
    assert plain == struct.pack("!II", 1, WALL) + b"\x45payload"


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (KeyDirection.NORMAL, KeyDirection.INVERSE),
        (KeyDirection.INVERSE, KeyDirection.NORMAL),
        (None, None),
    ],
)
def test_directions_mirror(ours: KeyDirection | None, theirs: KeyDirection | None) -> None:
    a, b = channel(ours), channel(theirs)
    assert b.decrypt(a.encrypt(b"one"), NOW) == b"one"
    assert a.decrypt(b.encrypt(b"two"), NOW) == b"two"
    if ours is not None:  # same direction on both ends: wrong keys
        with pytest.raises(AuthenticationError):
            channel(ours).decrypt(a.encrypt(b"x"), NOW)


def test_replays_refused_and_a_restarted_peer_accepted() -> None:
    ours = channel(KeyDirection.NORMAL)
    peer = channel(KeyDirection.INVERSE, time=WALL)
    first = peer.encrypt(b"a")
    assert ours.decrypt(first, NOW) == b"a"
    with pytest.raises(ReplayError):
        ours.decrypt(first, NOW)
    restarted = channel(KeyDirection.INVERSE, time=WALL + 60)
    assert ours.decrypt(restarted.encrypt(b"b"), NOW) == b"b"  # id 1 again, newer time
    with pytest.raises(ReplayError):
        ours.decrypt(peer.encrypt(b"c"), NOW)  # the older time is gone


def test_aead_ciphers_are_refused_in_static_mode() -> None:
    with pytest.raises(ConfigError, match="CBC cipher"):
        channel(None, cipher="AES-256-GCM")


# --------------------------------------------------------------------------- the client


def config(transport: Transport = Transport.UDP, **changes: object) -> Config:
    values: dict[str, object] = {
        "remotes": (Remote("192.0.2.1", 1194, Proto(transport)),),
        "secret": KEY,
        "secret_direction": KeyDirection.INVERSE,
        "cipher": "AES-256-CBC",
        "auth": "SHA256",
        "ifconfig": IfConfig(ipaddress.IPv4Address("10.9.0.2"), ipaddress.IPv4Address("10.9.0.1")),
        "ping": 10,
        "ping_restart": 60,
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def drain(client: StaticKeyClient) -> list[Event]:
    events: list[Event] = []
    while (event := client.next_event()) is not None:
        events.append(event)
    return events


def up(transport: Transport = Transport.UDP, **changes: object) -> StaticKeyClient:
    client = StaticKeyClient(
        config(transport, **changes), rng=rng_counter(), now=NOW, wall_clock=lambda: WALL
    )
    warning, connect = drain(client)
    assert warning == ProgressReported(message=STATIC_KEY_WARNING)
    assert isinstance(connect, ConnectionRequested) and connect.transport is transport
    client.handle_connected(now=NOW)
    [established] = drain(client)
    assert isinstance(established, TunnelEstablished)
    settings = established.settings
    assert str(settings.ipv4) == "10.9.0.2/32" and str(settings.ipv4_peer) == "10.9.0.1"
    assert settings.key_derivation == "static key"
    return client


def test_tunnel_is_up_at_connect_and_carries_packets_both_ways() -> None:
    client = up()
    peer = channel(KeyDirection.NORMAL)
    wire = client.encrypt_tunnel_packet(b"\x45to-peer", now=NOW)
    assert wire is not None and peer.decrypt(wire, NOW) == b"\x45to-peer"
    client.receive(peer.encrypt(b"\x45from-peer"), now=NOW + 1)
    client.receive(peer.encrypt(PING_MAGIC), now=NOW + 1)
    client.receive(b"\x00" * 80, now=NOW + 1)  # garbage: dropped, counted
    assert client.tunnel_packets() == [b"\x45from-peer"]
    assert client.stats.pings_received == 1 and sum(client.stats.dropped.values()) == 1


def test_pings_and_ping_restart() -> None:
    client = up()
    peer = channel(KeyDirection.NORMAL)
    assert client.data_to_send(now=NOW + 5) == []
    assert client.get_timer() == NOW + 10
    [ping] = client.data_to_send(now=NOW + 10)
    assert peer.decrypt(ping, NOW) == PING_MAGIC
    client.handle_timer(now=NOW + 59)
    assert drain(client) == []
    client.handle_timer(now=NOW + 60)
    disconnect, restarting = drain(client)
    assert isinstance(disconnect, DisconnectionRequested)
    assert isinstance(restarting, SessionRestarting) and "ping-restart" in restarting.reason


def test_occ_exit_restarts_and_close_ends() -> None:
    client = up()
    client.receive(channel(KeyDirection.NORMAL).encrypt(OCC_EXIT_MESSAGE), now=NOW)
    assert any(isinstance(e, SessionRestarting) for e in drain(client))
    client.close(now=NOW)
    assert isinstance(drain(client)[-1], SessionEnded)


def test_tcp_is_length_framed() -> None:
    client = up(Transport.TCP)
    peer = channel(KeyDirection.NORMAL)
    wire = client.encrypt_tunnel_packet(b"\x45x", now=NOW)
    assert wire is not None
    [inner] = StreamDecoder().feed(wire)
    assert peer.decrypt(inner, NOW) == b"\x45x"
    framed = encode_frame(peer.encrypt(b"\x45y"))
    client.receive(framed[:5], now=NOW)
    client.receive(framed[5:], now=NOW)
    assert client.tunnel_packets() == [b"\x45y"]
    client.receive(encode_frame(b"\x00" * 64), now=NOW)  # a bad packet on TCP restarts
    assert any(isinstance(e, SessionRestarting) for e in drain(client))


def test_static_mode_decompresses_lzo_from_its_config() -> None:
    """MirageVPN's static scenario: `comp-lzo` on both ends (OpenVPN 2.6: asym without
    allow-compression), over TCP; a corrupt LZO packet is dropped, the stream goes on."""
    client = up(Transport.TCP, compression=Compression.LZO, allow_compression=AllowCompression.ASYM)
    peer = channel(KeyDirection.NORMAL)  # frames nothing: the test writes the comp-lzo byte
    payload = b"\x45" + b"\x00" * 1300
    client.receive(encode_frame(peer.encrypt(b"\x66" + lzo.compress(payload, 1, False))), now=NOW)
    client.receive(encode_frame(peer.encrypt(b"\x66\xff\xff")), now=NOW)
    client.receive(encode_frame(peer.encrypt(b"\xfa\x45plain")), now=NOW)
    assert client.tunnel_packets() == [payload, b"\x45plain"]
    assert client.stats.decompression.packets == 1
    assert client.stats.dropped[DropReason.DECOMPRESSION_FAILED] == 1
    assert not any(isinstance(e, SessionRestarting) for e in drain(client))
    wire = client.encrypt_tunnel_packet(b"\x45x", now=NOW)
    assert wire is not None
    [inner] = StreamDecoder().feed(wire)
    assert peer.decrypt(inner, NOW) == b"\xfa\x45x"  # never compressed


# --------------------------------------------------------------------------- config


BASE = "dev tun\nremote 192.0.2.1\nsecret ta.key 1\nifconfig 10.9.0.2 10.9.0.1\n"


def parse(text: str, key: bytes) -> Config:
    return parse_config(text, read_file=lambda name: key)


def test_config_accepts_static_mode_with_a_warning(pki: Pki) -> None:
    parsed = parse(BASE + "cipher AES-256-CBC\n", pki.ta_key.encode())
    assert parsed.secret is not None and parsed.secret_direction is KeyDirection.INVERSE
    assert any("no forward secrecy" in w.message for w in parsed.warnings)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (BASE, "needs a CBC cipher"),
        (BASE + "cipher AES-256-GCM\n", "needs a CBC cipher"),
        ("dev tun\nremote 192.0.2.1\nsecret ta.key\ncipher AES-128-CBC\n", "ifconfig LOCAL"),
        ("dev tun\nsecret ta.key\ncipher AES-128-CBC\nifconfig 10.9.0.2 10.9.0.1\n", "no peer"),
        (BASE + "cipher AES-256-CBC\npull\n", "no server to pull from"),
    ],
)
def test_config_refusals_name_the_fix(pki: Pki, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match="static-key mode") as info:
        parse(text, pki.ta_key.encode())
    assert words in str(info.value)
