"""Our client against SoftEther VPN Server's OpenVPN clone (issue 10; MirageVPN issue #288).

SoftEther (the VPN Gate network's server) does not negotiate ciphers: its options string names
AES-128-CBC and SHA1, it pushes no `cipher`, it checks a user/password, and its SecureNAT hands
out 192.168.30.x by DHCP and pushes redirect-gateway. Over UDP and TCP the client must come up,
pass traffic both ways (ping of SecureNAT's virtual host, a 1 MiB checksummed TCP echo through
SecureNAT to an address of the server namespace that only the tunnel reaches), and still be up,
on its first session, 30 seconds later.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair
from tests.helpers.ourclient import TUNNEL_UP, OurClient, engine_ready
from tests.helpers.softether import VIRTUAL_HOST, SoftEtherServer, available
from tests.helpers.traffic import ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
    pytest.mark.skipif(not available(), reason="softether-vpnserver is not installed"),
]

USER, PASSWORD = "vpngate", "s3cret-pw"
BEHIND_NAT = "10.77.0.1"  # on the server namespace's loopback: reached only through SecureNAT
STILL_UP_AFTER = 30.0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_softether_openvpn_server(netns_pair: NetnsPair, workdir: Path, transport: str) -> None:
    pair = netns_pair
    with SoftEtherServer.start(
        pair.server, workdir / "softether", user=USER, password=PASSWORD
    ) as server:
        pair.server.run(["ip", "addr", "add", f"{BEHIND_NAT}/32", "dev", "lo"])
        credentials = workdir / "credentials"
        credentials.write_text(f"{USER}\n{PASSWORD}\n")
        config = "\n".join(
            [
                "client",
                "dev tun",
                f"remote {pair.server_address} 1194 {transport}",
                "nobind",
                f"peer-fingerprint {server.fingerprint}",
                f"auth-user-pass {credentials}",
                "",
            ]
        )
        with OurClient.start(pair.client, config, workdir) as client:
            client.wait_tunnel_up()
            log = client.log_text()
            assert "the server did not negotiate a cipher; its options name AES-128-CBC" in log
            assert "legacy data cipher AES-128-CBC with HMAC-SHA1" in log, client.tail()
            ping(pair.client, VIRTUAL_HOST)
            transfer = tcp_transfer(pair.server, pair.client, BEHIND_NAT)
            assert transfer.peer != str(pair.link.b_address.ip), "bytes bypassed the tunnel"
            time.sleep(STILL_UP_AFTER)
            ping(pair.client, VIRTUAL_HOST)
            log = client.log_text()
            assert log.count(TUNNEL_UP) == 1 and "restarting" not in log.lower(), client.tail()
            stats = client.stats()
            assert stats.tunnel_in > 100 and not stats.dropped, client.tail()
            assert client.stop() == 0, client.tail()
