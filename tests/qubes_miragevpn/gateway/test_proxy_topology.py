"""The gateway through a SOCKS5 proxy (how a VPN runs over Tor in Qubes: Whonix's gateway
offers SOCKS5), in the simulated Qubes topology, against a real OpenVPN 2.6 server.

dante's danted runs in sys-net on the server's address, port 1080 (the server itself listens on
443). The firewall's Connecting and Connected policies must let the daemon's marked socket
reach the proxy's endpoint, not the server's endpoint named in the profile: the tunnel coming
up proves they do, and the capture on the uplink proves that nothing else left sys-vpn (no
packet to the server's own port).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.gateway import TCP, built_world, start_server
from tests.helpers.proxies import available, start_danted

pytestmark = [
    pytest.mark.qubes,
    pytest.mark.netns,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not available(), reason="tinyproxy/danted missing: run make setup"),
]
SOCKS_PORT = 1080


def test_the_gateway_connects_through_a_socks5_proxy_and_only_to_it(tmp_path: Path) -> None:
    with built_world(tmp_path, {"tor.ovpn": (TCP, ())}) as world:
        topo = world.topo
        profile = world.config_dir / "tor.ovpn"
        profile.write_text(profile.read_text() + f"socks-proxy {topo.server4} {SOCKS_PORT}\n")
        start_server(world, "tcp", TCP)
        with start_danted(
            topo.sysnet,
            tmp_path / "danted",
            topo.server4,
            port=SOCKS_PORT,
            external=topo.server4,
            allow_to=f"{topo.server4}/32",
        ) as proxy:
            block = world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path))
            topo.sysvpn.run(block)
            with topo.capture() as cap:
                world.start_daemon()
                world.wait_through_tunnel(time.monotonic(), "through a SOCKS5 proxy")
            log = world.daemon_log()
            assert f"connecting to {topo.server4} port {SOCKS_PORT} over TCP (SOCKS5 proxy)" in log
            frames = cap.frames_from_sysvpn()
            to_proxy = (str(topo.server4), 6, SOCKS_PORT)
            assert any((f.dst, f.proto, f.dport) == to_proxy for f in frames), frames[:5]
            leaks = [
                f
                for f in frames
                if not (f.src == str(topo.sysvpn4) and (f.dst, f.proto, f.dport) == to_proxy)
            ]
            assert leaks == [], "\n".join(map(str, leaks[:20]))
            assert "connect" in proxy.log_text()  # danted logged the CONNECT it relayed
