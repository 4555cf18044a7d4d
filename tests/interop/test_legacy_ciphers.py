"""Our client against real OpenVPN 2.6 servers that use CBC+HMAC data channels (issue 10).

Each case carries traffic both ways (ping + a 1 MiB checksummed TCP echo through the tunnel):

- negotiated CBC: the server's `data-ciphers` holds only a CBC cipher, both sides configure the
  same `auth` (it is never pushed); P_DATA_V2 with the pushed peer-id; with the `comp-lzo no`
  and `compress` (stub, swap) framings;
- a server that does not negotiate with us, the 2.4 way (`cipher AES-128-CBC`, `auth SHA1`): our
  client drops the pushed `cipher` and `peer-id` (pull-filter), so the cipher comes from the
  server's options string and we send P_DATA_V1 without a peer-id;
- renegotiation under CBC (server `reneg-sec`), traffic on the new key.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair
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
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]


def traffic(pair: NetnsPair) -> None:
    ping(pair.client, SERVER_TUN_ADDRESS)
    transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS)
    assert_through_tunnel(transfer, str(TUNNEL_NETWORK))


def both(auth: str) -> dict[str, tuple[str, ...]]:
    return {"extra_server": (f"auth {auth}",), "extra_client": (f"auth {auth}",)}


NEGOTIATED = [
    Scenario(
        transport="udp",
        protection=Protection.TLS_AUTH,
        data_ciphers=("AES-256-CBC",),
        **both("SHA256"),  # type: ignore[arg-type]
    ),
    Scenario(
        transport="tcp",
        protection=Protection.TLS_CRYPT,
        data_ciphers=("AES-128-CBC",),
        **both("SHA512"),  # type: ignore[arg-type]
    ),
    Scenario(
        transport="udp",
        protection=Protection.NONE,
        data_ciphers=("AES-192-CBC",),
        extra_server=("auth SHA384", 'push "comp-lzo no"', "comp-lzo no"),
        extra_client=("auth SHA384",),
    ),
    Scenario(
        transport="tcp",
        protection=Protection.TLS_AUTH,
        data_ciphers=("AES-256-CBC",),
        extra_server=("auth SHA1", "compress", 'push "compress"'),  # stub: swap framing
        extra_client=("auth SHA1",),
    ),
]


@pytest.mark.parametrize("scenario", NEGOTIATED, ids=lambda s: s.label)
def test_negotiated_cbc(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, scenario: Scenario
) -> None:
    pair = netns_pair
    config = client_config(scenario, pki_files, pair.server_address, real=False)
    with (
        OpenVpnServer.start(pair.server, scenario, pki_files, workdir, pair.server_address),
        OurClient.start(pair.client, config, workdir) as client,
    ):
        client.wait_tunnel_up()
        traffic(pair)
        log = client.log_text()
        cipher, auth = scenario.data_ciphers[0], scenario.extra_client[0].split()[1]
        assert f"legacy data cipher {cipher} with HMAC-{auth} (pushed)" in log, client.tail()
        stats = client.stats()
        assert not stats.dropped and stats.tunnel_in > 100, client.tail()
        assert client.stop() == 0, client.tail()


def test_server_without_negotiation_the_2_4_way(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path
) -> None:
    """The server is configured as a 2.4 one (`cipher AES-128-CBC`, `auth SHA1`). A 2.6 server
    pushes the cipher to every client that announces IV_CIPHERS and refuses one it shares no
    cipher with (its data-ciphers-fallback serves only clients without IV_CIPHERS), so the
    part of a server that does not negotiate is played by our client ignoring the pushed
    `cipher` and `peer-id`: it must read the cipher and auth from the server's options string
    and send P_DATA_V1 without a peer-id."""
    pair = netns_pair
    scenario = Scenario(
        transport="udp",
        protection=Protection.TLS_AUTH,
        data_ciphers=("AES-128-CBC",),
        client_data_ciphers=("AES-256-GCM", "AES-128-CBC"),
        extra_server=("cipher AES-128-CBC", "auth SHA1", "data-ciphers-fallback AES-128-CBC"),
        extra_client=('pull-filter ignore "cipher"', 'pull-filter ignore "peer-id"'),
    )
    config = client_config(scenario, pki_files, pair.server_address, real=False)
    with (
        OpenVpnServer.start(pair.server, scenario, pki_files, workdir, pair.server_address),
        OurClient.start(pair.client, config, workdir) as client,
    ):
        client.wait_tunnel_up()
        traffic(pair)
        log = client.log_text()
        assert "the server did not negotiate a cipher; its options name AES-128-CBC" in log, (
            client.tail()
        )
        assert "legacy data cipher AES-128-CBC with HMAC-SHA1 (server options string)" in log
        stats = client.stats()
        assert not stats.dropped and stats.tunnel_in > 100, client.tail()
        assert client.stop() == 0, client.tail()


def test_renegotiation_under_cbc(netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path) -> None:
    """The server renegotiates every 5 s: the CBC keys of the new key ids carry traffic."""
    pair = netns_pair
    scenario = Scenario(
        transport="udp",
        protection=Protection.TLS_CRYPT,
        data_ciphers=("AES-256-CBC",),
        extra_server=("auth SHA256", "reneg-sec 5"),
        extra_client=("auth SHA256", "hand-window 3"),
    )
    config = client_config(scenario, pki_files, pair.server_address, real=False)
    with (
        OpenVpnServer.start(
            pair.server, scenario, pki_files, workdir, pair.server_address
        ) as server,
        OurClient.start(pair.client, config, workdir) as client,
    ):
        client.wait_tunnel_up()
        deadline = time.monotonic() + 30
        while server.log_text().count("Outgoing Data Channel: Cipher 'AES-256-CBC'") < 3:
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            ping(pair.client, SERVER_TUN_ADDRESS, count=1)
            time.sleep(0.5)
        time.sleep(3.5)  # past our send switch to the newest key
        traffic(pair)
        stats = client.stats()
        assert stats.dropped.keys() <= {"unknown key id"}, client.tail()
        assert client.stop() == 0, client.tail()
