"""Static-key mode (`secret`) of our client against a real OpenVPN 2.6 static-key peer (issue 10).

The peer runs `secret KEY DIR`, `cipher`, `auth`, `ifconfig 10.9.0.1 10.9.0.2` in the server
namespace; our client the mirror image. Each case carries traffic both ways (ping + a 1 MiB
checksummed TCP echo through the tunnel) over UDP and TCP, with both key directions and with
none (bidirectional), and the log carries the loud warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, wait_until
from tests.helpers.openvpn import OpenVpnServer
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

PEER_ADDRESS = "10.9.0.1"
OUR_ADDRESS = "10.9.0.2"


@dataclass(frozen=True)
class Case:
    transport: str
    their_direction: str  # "" (bidirectional), "0" or "1"
    cipher: str
    auth: str

    @property
    def our_direction(self) -> str:
        return {"": "", "0": "1", "1": "0"}[self.their_direction]

    @property
    def label(self) -> str:
        return f"{self.transport}-dir{self.their_direction or 'bi'}-{self.cipher}-{self.auth}"


CASES = [
    Case("udp", "0", "AES-256-CBC", "SHA256"),
    Case("tcp", "1", "AES-128-CBC", "SHA1"),
    Case("udp", "", "AES-192-CBC", "SHA512"),
]


def peer_config(case: Case, files: PkiFiles) -> str:
    proto = "udp" if case.transport == "udp" else "tcp-server"
    return "\n".join(
        [
            "port 1194",
            f"proto {proto}",
            "dev tun",
            f"secret {files.ta_key} {case.their_direction}".rstrip(),
            f"cipher {case.cipher}",
            f"auth {case.auth}",
            f"ifconfig {PEER_ADDRESS} {OUR_ADDRESS}",
            "ping 2",
            "disable-dco",
            "verb 4",
            "",
        ]
    )


def our_config(case: Case, files: PkiFiles, remote: object) -> str:
    return "\n".join(
        [
            "dev tun",
            f"remote {remote} 1194 {case.transport}",
            "nobind",
            f"secret {files.ta_key} {case.our_direction}".rstrip(),
            f"cipher {case.cipher}",
            f"auth {case.auth}",
            f"ifconfig {OUR_ADDRESS} {PEER_ADDRESS}",
            "ping 2",
            "ping-restart 20",
            "",
        ]
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_static_key_peer(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, case: Case
) -> None:
    pair = netns_pair
    workdir.mkdir(parents=True, exist_ok=True)
    peer_path = workdir / "peer.conf"
    peer_path.write_text(peer_config(case, pki_files))
    with OpenVpnServer(
        pair.server, peer_path, workdir / "peer.log", address=pair.server_address
    ) as peer:
        peer.spawn()
        # a static peer without `remote` is ready once it listens; it completes
        # initialisation when our first packet arrives
        wait_until(
            lambda: any(m in peer.log_text() for m in ("link local", "Listening for incoming")),
            timeout=20,
            what="the static peer listening",
        )
        with OurClient.start(
            pair.client, our_config(case, pki_files, pair.server_address), workdir
        ) as client:
            client.wait_tunnel_up()
            peer.wait_ready()
            ping(pair.client, PEER_ADDRESS)
            transfer = tcp_transfer(pair.server, pair.client, PEER_ADDRESS)
            assert_through_tunnel(transfer, "10.9.0.0/24")
            log = client.log_text()
            assert "WARNING: static-key mode (secret) has no forward secrecy" in log, client.tail()
            stats = client.stats()
            assert stats.tunnel_in > 100 and not stats.dropped.keys() - {"occ message"}, (
                client.tail()
            )
            assert client.stop() == 0, client.tail()
        assert "Authenticate/Decrypt packet error" not in peer.log_text()
