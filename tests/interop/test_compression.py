"""Our client against real OpenVPN 2.6 servers that push compression (issue 11, item 6).

Each server has `allow-compression yes`, so it really compresses what it sends (comp-lz4.c,
lzo.c: only with COMP_F_ALLOW_COMPRESS, and only packets of 100 bytes or more that shrink).
Proof that it did: our statistics count decompressed packets after a ping with a zero-filled
payload and a TCP echo of a repeated block, both of which the server's replies carry
compressed; a random-payload echo and a plain ping go through too (the uncompressed framing
of the same algorithm). We never compress: our bytes on the wire for the compressible echo
are more than the MiB we sent, while the server's came back in under half of it; and the
server decodes our packets under the same framing, or the echo checksums would not match.

- `compress lz4-v2` over UDP, our `allow-compression yes`;
- `compress lz4` (swap framing) over TCP, our `allow-compression asym`;
- `comp-lzo yes` over UDP, our `allow-compression yes`; and over TCP with an AES-256-CBC
  data channel (the legacy combination), our `allow-compression asym`;
- static-key mode, `comp-lzo yes` configured on both ends (there is no push);
- our `allow-compression no` (and a config with no compression option at all, which is the
  same in 2.6): the pushed `compress lz4-v2` is refused, as OpenVPN 2.6 does ("server pushed
  compression settings that are not allowed"), and no tunnel comes up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, wait_until
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    TUNNEL_NETWORK,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import MiB, assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

COMPRESSIBLE_PINGS = 10


@dataclass(frozen=True)
class Case:
    name: str
    transport: str
    server: tuple[str, ...]  # the server's compression lines (pushed too)
    client: tuple[str, ...]  # our client's allow-compression line
    server_says: str  # comp-lz4.c / lzo.c at verb 4: the server's compressor is on
    data_ciphers: tuple[str, ...] = ("AES-256-GCM",)

    def scenario(self) -> Scenario:
        return Scenario(
            transport=self.transport,
            protection=Protection.TLS_CRYPT,
            data_ciphers=self.data_ciphers,
            extra_server=("allow-compression yes", *self.server),
            extra_client=self.client,
        )


CASES = [
    Case(
        "lz4-v2",
        "udp",
        ("compress lz4-v2", 'push "compress lz4-v2"'),
        ("allow-compression yes",),
        "LZ4v2 compression initializing",
    ),
    Case(
        "lz4",
        "tcp",
        ("compress lz4", 'push "compress lz4"'),
        ("allow-compression asym",),
        "LZ4 compression initializing",
    ),
    Case(
        "comp-lzo",
        "udp",
        ("comp-lzo yes", 'push "comp-lzo yes"'),
        ("allow-compression yes",),
        "LZO compression initializing",
    ),
    Case(  # the legacy combination: CBC+HMAC data channel (cbcchannel.py) with comp-lzo
        "comp-lzo-cbc",
        "tcp",
        ("comp-lzo yes", 'push "comp-lzo yes"'),
        ("allow-compression asym",),
        "LZO compression initializing",
        ("AES-256-CBC",),
    ),
]


def compressible_ping(pair: NetnsPair) -> None:
    """Zero-filled 1200-byte echo requests: the server's replies are LZ4/LZO-compressed."""
    argv = ["ping", "-c", str(COMPRESSIBLE_PINGS), "-i", "0.2", "-W", "2", "-s", "1200"]
    result = pair.client.run([*argv, "-p", "00", SERVER_TUN_ADDRESS], timeout=30, check=False)
    assert f"{COMPRESSIBLE_PINGS} received" in result.stdout, result.stdout


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-{c.transport}")
def test_the_servers_compressed_packets_are_decompressed(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, case: Case
) -> None:
    pair = netns_pair
    scenario = case.scenario()
    config = client_config(scenario, pki_files, pair.server_address, real=False)
    with (
        OpenVpnServer.start(pair.server, scenario, pki_files, workdir, pair.server_address) as srv,
        OurClient.start(pair.client, config, workdir) as client,
    ):
        client.wait_tunnel_up()
        before = client.stats()
        ping(pair.client, SERVER_TUN_ADDRESS)
        transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS)  # random: as is
        assert_through_tunnel(transfer, str(TUNNEL_NETWORK))
        middle = client.stats()
        compressible_ping(pair)
        squeezed = tcp_transfer(
            pair.server, pair.client, SERVER_TUN_ADDRESS, port=5002, size=MiB, compressible=True
        )
        assert_through_tunnel(squeezed, str(TUNNEL_NETWORK))
        after = client.stats()
        assert case.server_says in srv.log_text(), srv.log_text()[-3000:]
        assert "Compression for sending and receiving enabled" in srv.log_text()
        # the compressible traffic came compressed: every zero-filled reply and most echo
        # segments (the server compresses what shrinks; its TCP segments are ~1400 bytes)
        assert after.decompressed - middle.decompressed >= COMPRESSIBLE_PINGS + 100, (
            before,
            middle,
            after,
            client.tail(),
        )
        # on the wire: the echo came back compressed, what we sent was not (1 MiB each way)
        assert after.bytes_in - middle.bytes_in < MiB // 2, (middle, after)
        assert after.bytes_out - middle.bytes_out > MiB, (middle, after)
        assert not after.dropped, client.tail()
        assert after.tunnel_in - before.tunnel_in > 500, (before, after)
        log = client.log_text()
        assert "compressed packets will be dropped" not in log
        assert client.stop() == 0, client.tail()


def test_static_key_peer_with_comp_lzo(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    """Static-key mode has no push: both ends configure `comp-lzo` (MirageVPN's static test
    scenario); the real peer compresses (allow-compression yes), we decompress (asym, the
    2.6 default with a compression option)."""
    pair = netns_pair
    workdir.mkdir(parents=True, exist_ok=True)
    peer_path = workdir / "peer.conf"
    peer_path.write_text(
        f"port 1194\nproto udp\ndev tun\nsecret {pki_files.ta_key} 0\ncipher AES-256-CBC\n"
        "auth SHA256\nifconfig 10.9.0.1 10.9.0.2\nping 2\ndisable-dco\nverb 4\n"
        "allow-compression yes\ncomp-lzo yes\n"
    )
    ours = (
        f"dev tun\nremote {pair.server_address} 1194 udp\nnobind\nsecret {pki_files.ta_key} 1\n"
        "cipher AES-256-CBC\nauth SHA256\nifconfig 10.9.0.2 10.9.0.1\nping 2\n"
        "ping-restart 20\ncomp-lzo yes\n"
    )
    with OpenVpnServer(
        pair.server, peer_path, workdir / "peer.log", address=pair.server_address
    ) as peer:
        peer.spawn()
        wait_until(
            lambda: any(m in peer.log_text() for m in ("link local", "Listening for incoming")),
            timeout=20,
            what="the static peer listening",
        )
        with OurClient.start(pair.client, ours, workdir) as client:
            client.wait_tunnel_up()
            peer.wait_ready()
            ping(pair.client, "10.9.0.1")
            before = client.stats()
            result = pair.client.run(
                ["ping", "-c", "5", "-i", "0.2", "-W", "2", "-s", "1200", "-p", "00", "10.9.0.1"],
                timeout=30,
                check=False,
            )
            assert "5 received" in result.stdout, result.stdout
            transfer = tcp_transfer(pair.server, pair.client, "10.9.0.1", compressible=True)
            assert_through_tunnel(transfer, "10.9.0.0/24")
            after = client.stats()
            assert after.decompressed - before.decompressed >= 5 + 100, (before, after)
            assert after.bytes_in - before.bytes_in < MiB // 2, (before, after)
            assert after.bytes_out - before.bytes_out > MiB, (before, after)
            assert not after.dropped.keys() - {"occ message"}, client.tail()
            assert client.stop() == 0, client.tail()
        assert "LZO compression initializing" in peer.log_text()
        assert "Authenticate/Decrypt packet error" not in peer.log_text()


@pytest.mark.parametrize("ours", [("allow-compression no",), ()], ids=["no", "unset"])
def test_allow_compression_no_refuses_a_pushed_compress(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, ours: tuple[str, ...]
) -> None:
    pair = netns_pair
    scenario = Scenario(
        transport="udp",
        protection=Protection.TLS_CRYPT,
        extra_server=("allow-compression yes", "compress lz4-v2", 'push "compress lz4-v2"'),
        extra_client=ours,
    )
    config = client_config(scenario, pki_files, pair.server_address, real=False)
    with (
        OpenVpnServer.start(pair.server, scenario, pki_files, workdir, pair.server_address),
        OurClient.start(pair.client, config, workdir) as client,
    ):
        wait_until(
            lambda: "compression is not allowed (allow-compression no)" in client.log_text(),
            30.0,
            what="the refusal of the pushed compression",
        )
        assert "tunnel up:" not in client.log_text(), client.tail()
        assert "server pushed 'compress lz4-v2'" in client.log_text(), client.tail()
        assert client.stop() == 0, client.tail()
