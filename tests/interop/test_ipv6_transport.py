"""IPv6 transport against a real OpenVPN 2.6 server: our client over an IPv6-only veth.

    server ns ── fd00:250::1/64 ═══ fd00:250::2/64 ── client ns     (no IPv4 on the link)

- `proto udp6`, `tcp6`/`tcp6-client` to an IPv6 literal: tunnel up, ping and a checksummed TCP
  transfer both ways (IPv4 and IPv6 inside the tunnel).
- a dual-stack name (an /etc/hosts that only our client sees: tests/helpers/ourclient.py) whose
  preferred address is dead: the client tries it, then falls back to the other family (over a
  link that carries both here), and so does OpenVPN's own client with the same hosts file (the
  control case); on the IPv6-only link, a name with A and AAAA works at once (`tcp6-client`:
  AAAA only).
- `redirect-gateway ipv6 !ipv4` pushed: ::/1 and 8000::/1 into the tun, no IPv4 redirect, and
  the host route to the (off-link) server via the uplink's IPv6 gateway, a link-local router
  as in real networks; every route gone afterwards.
- `block-ipv6`: IPv6 into the tunnel is answered with ICMPv6 no-route by the client itself
  (the kernel's ping shows it, so the checksum is right) and nothing IPv6 is sent to the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import Link6, Netns, connect, connect6, link_local, no_dad, wait_until
from tests.helpers.openvpn import (
    OPENVPN,
    READY_LINE,
    SERVER_TUN_ADDRESS,
    SERVER_TUN_ADDRESS_IPV6,
    TUNNEL_NETWORK,
    TUNNEL_NETWORK_IPV6,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready, private_hosts
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

DEAD6 = "fd00:250::dead"  # on the link, owned by nobody: neighbour discovery never answers
OFF_LINK6 = ipaddress.IPv6Address("fd00:beef::1")  # the server's "public" address, routed


@dataclass(frozen=True)
class Pair6:
    server: Netns
    client: Netns
    link: Link6

    @property
    def server_address(self) -> ipaddress.IPv6Address:
        return self.link.a_address.ip


@contextlib.contextmanager
def ipv6_only_pair() -> Iterator[Pair6]:
    with Netns.create("server6") as server, Netns.create("client6") as client:
        yield Pair6(server, client, connect6(server, client))


def scenario(client_proto: str, **changes: Any) -> Scenario:
    """Our client with `client_proto`; the server on `udp6`/`tcp6-server`, which listen on
    [::] and take IPv4 too (mapped addresses; no `bind ipv6only`): a dual-stack server. (A
    plain `proto udp` server binds what getaddrinfo gives first for the passive address.)"""
    transport = "udp" if client_proto.startswith("udp") else "tcp"
    server_proto = "udp6" if transport == "udp" else "tcp6-server"
    base = Scenario(
        transport=transport,
        protection=Protection.TLS_CRYPT,
        ipv6=True,
        client_proto=client_proto,
        extra_server=(f"proto {server_proto}",),
    )
    return replace(base, **changes)


def routes6(ns: Netns) -> set[str]:
    return {
        " ".join(
            str(x)
            for x in (r["dst"], "via" if "gateway" in r else "", r.get("gateway", ""), r.get("dev"))
            if x
        )
        for r in ns.json(["ip", "-j", "-6", "route", "show"])
    }


def routes4(ns: Netns) -> set[str]:
    return {f"{r['dst']} {r.get('dev', '')}" for r in ns.json(["ip", "-j", "-4", "route", "show"])}


def both_families_through_the_tunnel(server: Netns, client: Netns) -> None:
    ping(client, SERVER_TUN_ADDRESS)
    transfer = tcp_transfer(server, client, SERVER_TUN_ADDRESS)
    assert_through_tunnel(transfer, str(TUNNEL_NETWORK))
    ping(client, SERVER_TUN_ADDRESS_IPV6)
    transfer6 = tcp_transfer(server, client, SERVER_TUN_ADDRESS_IPV6, port=5002)
    assert_through_tunnel(transfer6, str(TUNNEL_NETWORK_IPV6))


@pytest.mark.parametrize("client_proto", ["udp6", "tcp6", "tcp6-client"])
def test_ipv6_literal_remote(pki_files: PkiFiles, workdir: Path, client_proto: str) -> None:
    s = scenario(client_proto)
    with ipv6_only_pair() as pair:
        remote = f"{pair.server_address}"
        with (
            OpenVpnServer.start(pair.server, s, pki_files, workdir, ipaddress.IPv4Address(0)),
            OurClient.start(
                pair.client, client_config(s, pki_files, remote, real=False), workdir
            ) as c,
        ):
            c.wait_tunnel_up()
            kind = "UDP" if client_proto.startswith("udp") else "TCP"
            assert f"connecting to {remote} port 1194 over {kind}" in c.log_text(), c.tail()
            both_families_through_the_tunnel(pair.server, pair.client)
            assert c.stop() == 0


@pytest.mark.parametrize("proto", ["udp", "tcp-client"])
def test_dual_stack_name_falls_back_from_a_dead_preferred_address(
    pki_files: PkiFiles, workdir: Path, proto: str
) -> None:
    """`remote vpn.test 1194 udp|tcp-client` with AAAA (dead) and A (the server): getaddrinfo
    puts the IPv6 address first (RFC 6724 precedence); it never answers (UDP: no reply until
    server-poll-timeout; TCP: neighbour discovery fails, EHOSTUNREACH), then the A record of the
    same remote is tried: tunnel up over IPv4."""
    s = scenario(proto, extra_client=("server-poll-timeout 5", "connect-timeout 10"))
    with Netns.create("server") as server, Netns.create("client") as client:
        no_dad(server, client)
        link4 = connect(server, client)
        server.run(["ip", "-6", "addr", "add", "fd00:250::1/64", "dev", link4.a_if, "nodad"])
        client.run(["ip", "-6", "addr", "add", "fd00:250::2/64", "dev", link4.b_if, "nodad"])
        hosts = f"{DEAD6} vpn.test\n{link4.a_address.ip} vpn.test\n"
        config = client_config(s, pki_files, "vpn.test", real=False)
        started = time.monotonic()
        with (
            OpenVpnServer.start(server, s, pki_files, workdir, link4.a_address.ip),
            OurClient.start(client, config, workdir, hosts=hosts) as c,
        ):
            c.wait_tunnel_up(timeout=60)
            took = time.monotonic() - started
            log = c.log_text()
            assert f"vpn.test is {DEAD6}, {link4.a_address.ip}" in log, c.tail()
            first = log.index(f"connecting to {DEAD6} port 1194")
            second = log.index(f"connecting to {link4.a_address.ip} port 1194")
            assert first < second, c.tail()
            assert log.count("resolving vpn.test") == 1, c.tail()  # the next address, not a lookup
            print(f"\n{proto}: tunnel up {took:.1f} s after start, over IPv4 after the dead IPv6")
            ping(client, SERVER_TUN_ADDRESS)
            transfer = tcp_transfer(server, client, SERVER_TUN_ADDRESS)
            assert_through_tunnel(transfer, str(TUNNEL_NETWORK))
            assert c.stop() == 0


def test_the_real_openvpn_client_walks_the_same_order(pki_files: PkiFiles, workdir: Path) -> None:
    """The control case for the test above: OpenVPN 2.6's own client, same name, same hosts
    file, `proto udp`: it too tries the dead IPv6 address first and then the IPv4 one of the
    same remote (getaddrinfo's order, `ai_next` after server-poll-timeout)."""
    s = scenario("udp", extra_client=("server-poll-timeout 5",))
    with Netns.create("server") as server, Netns.create("client") as client:
        no_dad(server, client)
        link4 = connect(server, client)
        server.run(["ip", "-6", "addr", "add", "fd00:250::1/64", "dev", link4.a_if, "nodad"])
        client.run(["ip", "-6", "addr", "add", "fd00:250::2/64", "dev", link4.b_if, "nodad"])
        hosts = workdir / "hosts"
        hosts.write_text(f"{DEAD6} vpn.test\n{link4.a_address.ip} vpn.test\n")
        config = workdir / "openvpn-client.conf"
        config.write_text(client_config(s, pki_files, "vpn.test", real=True))
        log = workdir / "openvpn-client.log"
        with OpenVpnServer.start(server, s, pki_files, workdir, link4.a_address.ip):
            with log.open("ab") as out:
                proc = client.spawn([*private_hosts(hosts), OPENVPN, "--config", str(config)],
                                    stdout=out)  # fmt: skip
            wait_until(lambda: READY_LINE in log.read_text() or proc.poll() is not None, 60.0,
                       what="the real client's tunnel")  # fmt: skip
            text = log.read_text()
            assert READY_LINE in text, text[-3000:]
            tried = [line for line in text.splitlines() if "link remote:" in line]
            assert DEAD6 in tried[0] and str(link4.a_address.ip) in tried[-1], tried
            ping(client, SERVER_TUN_ADDRESS)


@pytest.mark.parametrize("proto", ["udp", "tcp6-client"])
def test_dual_stack_name_on_an_ipv6_only_network(
    pki_files: PkiFiles, workdir: Path, proto: str
) -> None:
    """A and AAAA on a network without IPv4: the AAAA address carries the session. With
    `tcp6-client` only the AAAA lookup is made (getaddrinfo AF_INET6)."""
    s = scenario(proto)
    with ipv6_only_pair() as pair:
        hosts = f"192.0.2.1 vpn.test\n{pair.server_address} vpn.test\n"
        config = client_config(s, pki_files, "vpn.test", real=False)
        with (
            OpenVpnServer.start(pair.server, s, pki_files, workdir, ipaddress.IPv4Address(0)),
            OurClient.start(pair.client, config, workdir, hosts=hosts) as c,
        ):
            c.wait_tunnel_up()
            assert f"connected to {pair.server_address} port 1194" in c.log_text(), c.tail()
            if proto.startswith("tcp6"):
                assert f"vpn.test is {pair.server_address}\n" in c.log_text(), c.tail()
            both_families_through_the_tunnel(pair.server, pair.client)
            assert c.stop() == 0


def test_redirect_gateway_ipv6_not_ipv4(pki_files: PkiFiles, workdir: Path) -> None:
    """The server (fd00:beef::1, off-link) is reached through the client's default route via
    the server namespace's link-local address: redirect-gateway ipv6 needs a host route to it
    through that router first, and takes it away on exit."""
    s = scenario(
        "udp6",
        push_redirect_gateway="ipv6 !ipv4",
        extra_server=("proto udp6", f"local {OFF_LINK6}"),
    )
    with ipv6_only_pair() as pair:
        pair.server.run(["ip", "-6", "addr", "add", f"{OFF_LINK6}/128", "dev", "lo", "nodad"])
        router = link_local(pair.server, pair.link.a_if)
        pair.client.run(["ip", "-6", "route", "add", "default", "via", str(router),
                         "dev", pair.link.b_if])  # fmt: skip
        before6, before4 = routes6(pair.client), routes4(pair.client)
        config = client_config(s, pki_files, str(OFF_LINK6), real=False)
        with (
            OpenVpnServer.start(pair.server, s, pki_files, workdir, ipaddress.IPv4Address(0)),
            OurClient.start(pair.client, config, workdir) as c,
        ):
            c.wait_tunnel_up()
            during6 = routes6(pair.client)
            assert {"::/1 tun0", "8000::/1 tun0"} <= during6, during6
            assert f"{OFF_LINK6} via {router} {pair.link.b_if}" in during6, during6
            assert not {"0.0.0.0/1 tun0", "128.0.0.0/1 tun0"} & routes4(pair.client)
            both_families_through_the_tunnel(pair.server, pair.client)
            assert c.stop() == 0
        assert routes6(pair.client) == before6
        assert routes4(pair.client) == before4


def kept_ipv6(client: OurClient) -> int:
    """The block-ipv6 count of the last statistics (0 before any IPv6 packet)."""
    found = re.findall(r"block-ipv6: (\d+) IPv6 packets kept", client.log_text())
    return int(found[-1]) if found else 0


def test_block_ipv6_answers_with_icmpv6_no_route(pki_files: PkiFiles, workdir: Path) -> None:
    s = scenario("udp6", extra_client=("block-ipv6",))
    with ipv6_only_pair() as pair:
        config = client_config(s, pki_files, str(pair.server_address), real=False)
        with (
            OpenVpnServer.start(pair.server, s, pki_files, workdir, ipaddress.IPv4Address(0)),
            OurClient.start(pair.client, config, workdir) as c,
        ):
            c.wait_tunnel_up()
            assert "block-ipv6: IPv6 from tun0 is answered" in c.log_text(), c.tail()
            ping(pair.client, SERVER_TUN_ADDRESS)  # IPv4 goes through
            before, kept_before = c.stats(), kept_ipv6(c)
            result = pair.client.run(
                ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", SERVER_TUN_ADDRESS_IPV6],
                check=False,
            )
            assert result.returncode != 0, result.stdout
            # the answer comes from the ifconfig-ipv6 remote the server pushed (fd00:8::1)
            assert (
                f"From {SERVER_TUN_ADDRESS_IPV6} icmp_seq=1 Destination unreachable: No route"
                in (result.stdout)
            ), result.stdout
            after = c.stats()
            assert after.tunnel_out == before.tunnel_out  # nothing IPv6 went to the server
            # the 3 echo requests, counted (the kernel's own MLD/RS to groups were before)
            assert kept_ipv6(c) - kept_before == 3, c.tail()
            ping(pair.client, SERVER_TUN_ADDRESS)
            assert c.stats().tunnel_out > after.tunnel_out  # (the counter does count)
            assert c.stop() == 0
        wait_until(lambda: "tun0" not in pair.client.run(["ip", "link"]).stdout, 5.0)
