"""A real OpenVPN 2.6 server pushes what the kernel refuses, or what would hijack the path to
the server: our client logs and skips each, counts them, and carries traffic (issue 8, items 8
and 10).

- `route 10.3.0.0 255.255.0.0 1.1.1.1`: the gateway is not on the tunnel → ENETUNREACH.
- `route <server> 255.255.255.255` and `route 0.0.0.0 128.0.0.0`: they cover the server; the
  host route to the server through the pre-tunnel path comes first.

(An MTU too small for IPv6 is tested against the kernel in tests/qubes_miragevpn/test_netlink.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.netns import NetnsPair, netns_pair_context
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import ping

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]


def routes(pair: NetnsPair) -> set[str]:
    return {
        f"{r['dst']} {r.get('gateway', '')} {r.get('dev', '')}".replace("  ", " ").strip()
        for r in pair.client.json(["ip", "-j", "-4", "route", "show"])
    }


def test_refused_and_covering_routes_are_skipped_or_protected(
    pki_files: PkiFiles, workdir: Path
) -> None:
    with netns_pair_context(client_default_route=True) as pair:
        server_ip = pair.server_address
        scenario = Scenario(
            transport="udp",
            protection=Protection.TLS_CRYPT,
            push_routes=(
                "10.3.0.0 255.255.0.0 1.1.1.1",
                f"{server_ip} 255.255.255.255",
                "0.0.0.0 128.0.0.0",
                "192.168.100.0 255.255.255.0",
            ),
        )
        before = routes(pair)
        with (
            OpenVpnServer.start(pair.server, scenario, pki_files, workdir, server_ip),
            OurClient.start(
                pair.client, client_config(scenario, pki_files, server_ip, real=False), workdir
            ) as client,
        ):
            client.wait_tunnel_up()
            during = routes(pair)
            assert "192.168.100.0/24 10.8.0.1 tun0" in during, during
            assert "0.0.0.0/1 10.8.0.1 tun0" in during  # covers the server: after the host route
            assert f"{server_ip} {pair.link.b_if}" in during  # the server stays outside
            assert not any(r.startswith("10.3.0.0/16") for r in during)
            log = client.log_text()
            assert "not adding route 10.3.0.0/16 via 1.1.1.1 dev tun0: ENETUNREACH" in log
            assert "changes refused by the system (logged above)" in log, client.tail()
            ping(pair.client, SERVER_TUN_ADDRESS)  # the tunnel carries traffic regardless
            assert client.stop() == 0, client.tail()
        assert routes(pair) == before
