"""Our client (`miragevpn-client`, a subprocess) against a real OpenVPN 2.6 server.

Each axis value is covered with real traffic both ways (ping + a 1 MiB checksummed TCP echo):
UDP and TCP; no wrapping, tls-auth, tls-crypt, tls-crypt-v2; AES-128-GCM, AES-256-GCM,
CHACHA20-POLY1305; EKM forced by the server; pushed routes, DNS and IPv6; redirect-gateway.
Then the failure cases: server restart, a rejected certificate, a wrong tls-auth key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import Netns, NetnsPair, netns_pair_context, wait_until
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    SERVER_TUN_ADDRESS_IPV6,
    TUNNEL_NETWORK,
    TUNNEL_NETWORK_IPV6,
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

MATRIX = [
    Scenario(transport="udp", protection=Protection.TLS_AUTH, data_ciphers=("AES-256-GCM",)),
    Scenario(transport="tcp", protection=Protection.TLS_CRYPT, data_ciphers=("AES-128-GCM",)),
    Scenario(transport="udp", protection=Protection.NONE, data_ciphers=("CHACHA20-POLY1305",)),
    Scenario(transport="tcp", protection=Protection.TLS_AUTH, data_ciphers=("CHACHA20-POLY1305",)),
    Scenario(
        transport="udp",
        protection=Protection.TLS_CRYPT,
        data_ciphers=("AES-256-GCM",),
        force_ekm=True,
    ),
    Scenario(transport="udp", protection=Protection.TLS_CRYPT_V2, data_ciphers=("AES-128-GCM",)),
]


def tun_routes(ns: Netns, family: str = "-4") -> set[str]:
    return {
        f"{r['dst']} {r.get('dev', '')}".strip()
        for r in ns.json(["ip", "-j", family, "route", "show"])
    }


def links(ns: Netns) -> set[str]:
    return {link["ifname"] for link in ns.json(["ip", "-j", "link", "show"])}


def traffic(pair: NetnsPair) -> None:
    ping(pair.client, SERVER_TUN_ADDRESS)
    transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS)
    assert_through_tunnel(transfer, str(TUNNEL_NETWORK))


def start_server(pair: NetnsPair, scenario: Scenario, files: PkiFiles, workdir: Path) -> Any:
    return OpenVpnServer.start(pair.server, scenario, files, workdir, pair.server_address)


def our_config(pair: NetnsPair, scenario: Scenario, files: PkiFiles) -> str:
    return client_config(scenario, files, pair.server_address, real=False)


@pytest.mark.parametrize("scenario", MATRIX, ids=lambda s: s.label)
def test_matrix(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, scenario: Scenario
) -> None:
    pair = netns_pair
    with (
        start_server(pair, scenario, pki_files, workdir) as server,
        OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as client,
    ):
        client.wait_tunnel_up()
        traffic(pair)
        log = client.log_text()
        assert f"cipher {scenario.data_ciphers[0]}" in log, client.tail()
        assert "(tls-ekm)" in log, client.tail()  # a 2.6 server uses EKM when offered
        assert client.stop() == 0, client.tail()
        assert "tun0" not in links(pair.client)
        assert server.proc is not None and server.proc.poll() is None  # the server is fine


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tls1_prf_key_derivation(
    netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path, transport: str
) -> None:
    """--no-tls-ekm: the server does not push tls-ekm, data keys come from the TLS 1.0 PRF."""
    pair = netns_pair
    scenario = Scenario(transport=transport, protection=Protection.TLS_AUTH)
    with (
        start_server(pair, scenario, pki_files, workdir),
        OurClient.start(
            pair.client, our_config(pair, scenario, pki_files), workdir, args=("--no-tls-ekm",)
        ) as client,
    ):
        client.wait_tunnel_up()
        traffic(pair)
        assert "(tls1-prf)" in client.log_text(), client.tail()
        assert client.stop() == 0


def test_forced_ekm_refuses_prf(netns_pair: NetnsPair, pki_files: PkiFiles, workdir: Path) -> None:
    """A server with force-tls-key-material-export refuses a PRF-only client: AUTH_FAILED."""
    pair = netns_pair
    scenario = Scenario(protection=Protection.TLS_CRYPT, force_ekm=True)
    with (
        start_server(pair, scenario, pki_files, workdir),
        OurClient.start(
            pair.client, our_config(pair, scenario, pki_files), workdir, args=("--no-tls-ekm",)
        ) as client,
    ):
        assert client.wait_exit(timeout=60) == 3, client.tail()
        assert "AUTH_FAILED" in client.log_text(), client.tail()
        assert "tunnel up:" not in client.log_text()


def test_pushed_routes_dns_ipv6(pki_files: PkiFiles, workdir: Path) -> None:
    scenario = Scenario(
        transport="udp",
        protection=Protection.TLS_CRYPT,
        ipv6=True,
        push_routes=("192.168.100.0 255.255.255.0",),
        push_routes_ipv6=("fd00:99::/64",),
        push_dhcp_options=("DNS 10.8.0.1", "DOMAIN example.test"),
    )
    with netns_pair_context() as pair:
        routes_before = tun_routes(pair.client)
        with (
            start_server(pair, scenario, pki_files, workdir),
            OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as c,
        ):
            c.wait_tunnel_up()
            assert "192.168.100.0/24 tun0" in tun_routes(pair.client)
            assert "fd00:99::/64 tun0" in tun_routes(pair.client, "-6")
            assert "DNS 10.8.0.1" in c.log_text(), c.tail()
            traffic(pair)
            ping(pair.client, SERVER_TUN_ADDRESS_IPV6)
            transfer = tcp_transfer(pair.server, pair.client, SERVER_TUN_ADDRESS_IPV6, port=5002)
            assert_through_tunnel(transfer, str(TUNNEL_NETWORK_IPV6))
            assert c.stop() == 0
        assert tun_routes(pair.client) == routes_before
        assert not any("fd00:99" in r for r in tun_routes(pair.client, "-6"))


def test_redirect_gateway_def1(pki_files: PkiFiles, workdir: Path) -> None:
    scenario = Scenario(
        transport="tcp", protection=Protection.TLS_AUTH, push_redirect_gateway="def1 bypass-dhcp"
    )
    with netns_pair_context(client_default_route=True) as pair:
        before = tun_routes(pair.client)
        with (
            start_server(pair, scenario, pki_files, workdir),
            OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as c,
        ):
            c.wait_tunnel_up()
            during = tun_routes(pair.client)
            assert {"0.0.0.0/1 tun0", "128.0.0.0/1 tun0"} <= during
            assert f"{pair.server_address} {pair.link.b_if}" in during  # server kept reachable
            traffic(pair)
            assert c.stop() == 0
        assert tun_routes(pair.client) == before


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_server_restart_reconnects(pki_files: PkiFiles, workdir: Path, transport: str) -> None:
    """UDP: the server's RESTART (explicit-exit-notify) triggers it; TCP: the closed stream."""
    scenario = Scenario(
        transport=transport,
        protection=Protection.TLS_AUTH,
        keepalive=(2, 10),
        server_explicit_exit_notify=True,
    )
    with (
        netns_pair_context() as pair,
        start_server(pair, scenario, pki_files, workdir) as server,
        OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as c,
    ):
        c.wait_tunnel_up()
        traffic(pair)
        server.restart()
        restarted = time.monotonic()
        c.wait_tunnel_up(count=2, timeout=60)
        print(f"{transport}: tunnel up again {time.monotonic() - restarted:.1f}s after restart")
        traffic(pair)
        assert c.stop() == 0


def rejected_certificate_run(pki_files: PkiFiles, workdir: Path) -> tuple[int, str, str]:
    scenario = Scenario(
        transport="tcp",
        protection=Protection.TLS_CRYPT,
        wrong_client_cert=True,
        extra_client=("connect-retry-max 1", "hand-window 10"),
    )
    with (
        netns_pair_context() as pair,
        start_server(pair, scenario, pki_files, workdir) as server,
        OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as c,
    ):
        code = c.wait_exit(timeout=60)
        wait_until(
            lambda: "VERIFY ERROR" in server.log_text(), 5, what="the server to log the rejection"
        )
        return code, c.log_text(), c.tail()


def test_rejected_certificate_fails(pki_files: PkiFiles, workdir: Path) -> None:
    code, log, tail = rejected_certificate_run(pki_files, workdir)
    assert code == 3, tail  # SESSION_FAILED
    assert "tunnel up:" not in log
    assert "session ended" in log, tail


def test_rejected_certificate_says_why(pki_files: PkiFiles, workdir: Path) -> None:
    _, log, tail = rejected_certificate_run(pki_files, workdir)
    ended = [line for line in log.splitlines() if "session ended" in line]
    assert ended and "hand-window" not in ended[0], tail
    assert any(word in ended[0] for word in ("certificate", "alert", "closed")), tail


def test_wrong_tls_auth_key_times_out_clearly(pki_files: PkiFiles, workdir: Path) -> None:
    scenario = Scenario(
        transport="udp",
        protection=Protection.TLS_AUTH,
        wrong_client_static_key=True,
        extra_client=("connect-retry-max 1", "server-poll-timeout 5", "hand-window 5"),
    )
    with (
        netns_pair_context() as pair,
        start_server(pair, scenario, pki_files, workdir) as server,
        OurClient.start(pair.client, our_config(pair, scenario, pki_files), workdir) as c,
    ):
        code = c.wait_exit(timeout=90)
        assert code != 0, c.tail()
        log = c.log_text().lower()
        assert "tunnel up:" not in log
        assert "timeout" in log or "timed out" in log, c.tail()
        # the server dropped our packets for their HMAC: it never saw a valid one
        assert "hmac" in server.log_text().lower() or "authenticate" in server.log_text()
