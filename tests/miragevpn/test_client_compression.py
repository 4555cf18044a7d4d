"""Engine scenarios with a server that pushes compression (compression.py through the client).

The in-memory server (miniserver.py) frames nothing itself: its data key is built with
`Compression.NONE`, so what it encrypts is exactly the compression framing the test writes.
"""

from __future__ import annotations

import lz4.block
import lzo
import pytest

from miragevpn import compression
from miragevpn.client import Client
from miragevpn.config.model import AllowCompression, Proto, Remote, Transport
from miragevpn.errors import DropReason
from miragevpn.events import ProgressReported, SessionRestarting, TunnelEstablished
from miragevpn.framing import StreamDecoder, encode_frame
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import REPLY, MiniServer
from tests.miragevpn.scenario import T0, counter_rng, drain, exchange, make_config, wall_clock

PACKET = bytes.fromhex("450005dc00004000400100000a0800010a080002") + b"\xa5" * 1480


def connect(
    pki: Pki, push: str, allow: AllowCompression, tcp: bool = False
) -> tuple[Client, MiniServer, list[object]]:
    changes: dict[str, object] = {"allow_compression": allow}
    if tcp:
        changes["remotes"] = (Remote("192.0.2.1", 443, Proto(Transport.TCP)),)
    client = Client(make_config(pki, **changes), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki, reply=f"{REPLY},{push}")
    if tcp:
        tcp_exchange(client, server)
    else:
        exchange(client, server, T0)
    return client, server, list(drain(client))


def tcp_exchange(client: Client, server: MiniServer, rounds: int = 20) -> None:
    decoder = StreamDecoder()
    for _ in range(rounds):
        moved = False
        for chunk in client.data_to_send(now=T0):
            for packet in decoder.feed(chunk):
                server.receive(packet, T0)
            moved = True
        for wire in server.to_send(T0):
            client.receive(encode_frame(wire), now=T0)
            moved = True
        if not moved:
            return


def test_pushed_lz4_v2_is_decompressed_and_counted(pki: Pki) -> None:
    client, server, events = connect(pki, "compress lz4-v2", AllowCompression.ASYM)
    assert any(isinstance(e, TunnelEstablished) for e in events)
    compressed = b"\x50\x01" + lz4.block.compress(PACKET, store_size=False)
    client.receive(server.data_key().encrypt(compressed), now=T0 + 1)
    client.receive(server.data_key().encrypt(PACKET), now=T0 + 1)  # not compressed: as is
    assert client.tunnel_packets() == [PACKET, PACKET]
    inflated = client.stats.decompression
    assert (inflated.packets, inflated.bytes_in, inflated.bytes_out) == (
        1,
        len(compressed) - 2,
        len(PACKET),
    )
    # what we send: no 0x50 prefix needed for IP, never compressed
    wire = client.encrypt_tunnel_packet(PACKET, now=T0 + 1)
    assert wire is not None
    assert server.data_key().decrypt(wire, T0 + 1) == PACKET


def test_a_bomb_is_dropped_and_the_session_goes_on(pki: Pki) -> None:
    client, server, _ = connect(pki, "comp-lzo yes", AllowCompression.YES)
    bomb = b"\x66" + lzo.compress(bytes(200_000), 1, False)
    assert len(bomb) < 1500
    client.receive(server.data_key().encrypt(bomb), now=T0 + 1)
    assert client.tunnel_packets() == []
    assert client.stats.dropped[DropReason.DECOMPRESSION_FAILED] == 1
    client.receive(server.data_key().encrypt(b"\x66" + lzo.compress(PACKET, 1, False)), now=T0 + 1)
    assert client.tunnel_packets() == [PACKET]


def test_a_compressed_packet_on_tcp_is_dropped_without_restarting(pki: Pki) -> None:
    """A packet that decrypted but does not decompress leaves the stream in step."""
    client, server, events = connect(pki, "compress lz4", AllowCompression.ASYM, tcp=True)
    assert any(isinstance(e, TunnelEstablished) for e in events)
    corrupt = b"\x69\xff\xff\xff\xff"  # an LZ4 literal length that runs off the end
    client.receive(encode_frame(server.data_key().encrypt(corrupt)), now=T0 + 1)
    assert client.stats.dropped[DropReason.DECOMPRESSION_FAILED] == 1
    assert not [e for e in drain(client) if isinstance(e, SessionRestarting)]
    block = lz4.block.compress(PACKET, store_size=False)
    swapped = b"\x69" + block[1:] + block[:1]
    client.receive(encode_frame(server.data_key().encrypt(swapped)), now=T0 + 1)
    assert client.tunnel_packets() == [PACKET]


def test_allow_compression_no_refuses_the_push(pki: Pki) -> None:
    """OpenVPN 2.6 (init.c: do_deferred_options): "server pushed compression settings that
    are not allowed" ends the attempt."""
    _, _, events = connect(pki, "compress lz4-v2", AllowCompression.NO)
    restarts = [e for e in events if isinstance(e, SessionRestarting)]
    assert restarts and "allow-compression no" in restarts[0].reason
    assert not any(isinstance(e, TunnelEstablished) for e in events)


def test_stub_push_keeps_refusing_compressed_packets(pki: Pki) -> None:
    client, server, _ = connect(pki, "compress stub-v2", AllowCompression.YES)
    compressed = b"\x50\x01" + lz4.block.compress(PACKET, store_size=False)
    client.receive(server.data_key().encrypt(compressed), now=T0 + 1)
    assert client.tunnel_packets() == []
    assert client.stats.dropped[DropReason.COMPRESSION_REFUSED] == 1


def test_a_missing_library_is_said_once_per_session(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compression, "HAVE_LZ4", False)
    client, server, events = connect(pki, "compress lz4-v2", AllowCompression.ASYM)
    warnings = [
        e.message
        for e in events
        if isinstance(e, ProgressReported) and "will be dropped" in e.message
    ]
    assert warnings == [
        "compress lz4-v2: compressed packets will be dropped: the Python module 'lz4.block' is "
        "not installed (Debian: python3-lz4; PyPI: lz4)"
    ]
    compressed = b"\x50\x01" + lz4.block.compress(PACKET, store_size=False)
    for _ in range(3):
        client.receive(server.data_key().encrypt(compressed), now=T0 + 1)
    assert client.stats.dropped[DropReason.COMPRESSION_REFUSED] == 3
    assert not [e for e in drain(client) if isinstance(e, ProgressReported)]  # no repeat
