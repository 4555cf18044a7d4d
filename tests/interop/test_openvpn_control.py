"""The control case: the real OpenVPN client against the real OpenVPN server.

This proves the harness (namespaces, PKI, configs, traffic checks) on its own, so that a failure
of our client's interop tests points at our client, not at the test set-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    TUNNEL_NETWORK,
    OpenVpnClient,
    OpenVpnServer,
    Protection,
    Scenario,
)
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = pytest.mark.interop

SCENARIOS = [
    Scenario(transport="udp", protection=Protection.TLS_AUTH, data_ciphers=("AES-256-GCM",)),
    Scenario(transport="tcp", protection=Protection.TLS_CRYPT, data_ciphers=("AES-256-GCM",)),
]


def test_no_tunnel_no_traffic(netns_pair: NetnsPair) -> None:
    """Without a tunnel the client cannot reach the tunnel network: the checks below can fail."""
    result = netns_pair.client.run(["ping", "-c", "1", "-W", "1", SERVER_TUN_ADDRESS], check=False)
    assert result.returncode != 0


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.label)
def test_real_client_against_real_server(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, scenario: Scenario
) -> None:
    pair = netns_pair
    with (
        OpenVpnServer.start(pair.server, scenario, pki_files, workdir, pair.server_address),
        OpenVpnClient.start(pair.client, scenario, pki_files, workdir, pair.server_address) as c,
    ):
        assert "Initialization Sequence Completed" in c.log_text()
        ping(pair.client, SERVER_TUN_ADDRESS)
        transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS)
        assert_through_tunnel(transfer, str(TUNNEL_NETWORK))
        cipher_lines = [line for line in c.log_text().splitlines() if "Data Channel:" in line]
        assert any(scenario.data_ciphers[0] in line for line in cipher_lines), cipher_lines
