"""The firewall for real in the simulated Qubes topology: what AppVMs, sys-vpn's own processes
and the daemon's marked sockets can reach under each policy, proven with an uplink capture."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterator

import pytest
from pyroute2 import Conntrack

from qubes_miragevpn.gateway.conntrack import flush_connections
from qubes_miragevpn.gateway.nft import apply_policy, read_back, remove_all
from qubes_miragevpn.gateway.policy import (
    Blocked,
    Connected,
    Connecting,
    Endpoint,
    Facts,
    Policy,
    Tunnel,
)
from tests.helpers.qubes_topology import DEFAULT_MARK, QubesTopology, qubes_topology

pytestmark = pytest.mark.netns

VPN_PORT = 1194


@pytest.fixture
def topo() -> Iterator[QubesTopology]:
    with qubes_topology() as t:
        t.serve(t.sysnet, t.web4, 80, tag=b"uplink web")
        t.serve(t.sysnet, t.web6, 80, tag=b"uplink web6")
        t.serve(t.sysnet, t.leak4, 9, tag=b"uplink leak")
        t.serve(t.sysnet, t.server4, VPN_PORT, tag=b"vpn server")
        for dns in t.uplink_dns:
            t.serve(t.sysnet, dns, 53, tag=b"uplink dns")
        yield t


def install(topo: QubesTopology, policy: Policy, facts: Facts | None = None) -> None:
    chosen = facts or topo.facts()
    topo.sysvpn.call(lambda: apply_policy(policy, chosen))


def endpoint(topo: QubesTopology) -> Endpoint:
    return Endpoint(address=topo.server4, port=VPN_PORT, proto="udp")


def assert_appvms_refused_fast(topo: QubesTopology) -> None:
    for app in topo.appvms:
        other = next(a for a in topo.appvms if a is not app)
        for address, port, proto in [
            (topo.web4, 80, "tcp"),
            (topo.web6, 80, "tcp"),
            (topo.leak4, 9, "udp"),
            (topo.virtual_dns[0], 53, "udp"),
            (other.ip4, 80, "tcp"),
        ]:
            probe = topo.probe(app.ns, address, port, proto=proto)
            assert probe.failed_fast, f"{app.vif} -> {address}:{port}/{proto}: {probe}"
        for address in (topo.leak4, topo.leak6):
            ping = topo.ping(app.ns, address)
            assert ping.failed_fast, f"{app.vif} ping {address}: {ping}"


def test_baseline_without_our_table_appvms_reach_sys_net(topo: QubesTopology) -> None:
    """The probes can succeed: without our table Qubes forwards AppVMs to the uplink."""
    probe = topo.probe(topo.appvms[0].ns, topo.web4, 80)
    assert probe.outcome == "ok" and probe.reply == b"uplink web"
    assert topo.offload_candidates() > 0


def test_blocked_refuses_appvms_at_once_and_nothing_leaves(topo: QubesTopology) -> None:
    install(topo, Blocked())
    with topo.capture() as cap:
        assert_appvms_refused_fast(topo)
        for mark in (None, DEFAULT_MARK):
            own = topo.probe(topo.sysvpn, topo.web4, 80, mark=mark)
            assert own.failed_fast, own
            dns = topo.probe(topo.sysvpn, topo.uplink_dns[0], 53, proto="udp", mark=mark)
            assert dns.failed_fast, dns
    assert [str(f) for f in cap.frames_from_sysvpn()] == []
    assert topo.offload_candidates() == 0


def test_connecting_lets_only_marked_sockets_reach_the_endpoint(topo: QubesTopology) -> None:
    install(topo, Connecting(endpoints=(endpoint(topo),)))
    with topo.capture() as cap:
        marked = topo.probe(topo.sysvpn, topo.server4, VPN_PORT, proto="udp", mark=DEFAULT_MARK)
        assert marked.outcome == "ok" and marked.reply == b"vpn server"
        for address, port, mark in [
            (topo.server4, VPN_PORT, None),  # unmarked
            (topo.server4, VPN_PORT, DEFAULT_MARK + 1),  # someone else's mark
            (topo.leak4, 9, DEFAULT_MARK),  # marked, but not the endpoint
            (topo.uplink_dns[0], 53, DEFAULT_MARK),  # no hostname remote: no uplink DNS
        ]:
            probe = topo.probe(topo.sysvpn, address, port, proto="udp", mark=mark)
            assert probe.failed_fast, (address, port, mark, probe)
        tcp = topo.probe(topo.sysvpn, topo.server4, VPN_PORT, mark=DEFAULT_MARK)
        assert tcp.failed_fast, tcp  # the endpoint is UDP
        assert_appvms_refused_fast(topo)
    sent = cap.frames_from_sysvpn()
    assert sent, ("the marked datagram to the endpoint must be on the uplink", cap.frames)
    for frame in sent:
        assert (frame.src, frame.dst, frame.proto, frame.dport) == (
            str(topo.sysvpn4),
            str(topo.server4),
            17,
            VPN_PORT,
        ), str(frame)
    assert topo.offload_candidates() == 0


def test_connecting_with_a_hostname_allows_marked_uplink_dns(topo: QubesTopology) -> None:
    install(topo, Connecting(endpoints=(endpoint(topo),), resolve_via_uplink_dns=True))
    with topo.capture() as cap:
        for dns in topo.uplink_dns:
            marked = topo.probe(topo.sysvpn, dns, 53, proto="udp", mark=DEFAULT_MARK)
            assert marked.reply == b"uplink dns", marked
            unmarked = topo.probe(topo.sysvpn, dns, 53, proto="udp")
            assert unmarked.failed_fast, unmarked
    destinations = {(f.dst, f.dport) for f in cap.frames_from_sysvpn()}
    assert destinations == {(str(d), 53) for d in topo.uplink_dns}


def connected(topo: QubesTopology, *, ipv6: bool = False, dns: bool = True) -> Connected:
    tunnel = topo.add_tunnel(mtu=1400, ipv6=ipv6)
    topo.serve(tunnel.ns, topo.web4, 80, tag=b"tunnel web")
    if ipv6:
        topo.serve(tunnel.ns, topo.web6, 80, tag=b"tunnel web6")
    topo.serve(tunnel.ns, tunnel.peer4, 53, tag=b"vpn dns")
    return Connected(
        tunnel=Tunnel(
            device=tunnel.device,
            mtu=tunnel.mtu,
            ipv6=ipv6,
            dns=(tunnel.peer4,) if dns else (),
            endpoint=endpoint(topo),
        )
    )


def test_connected_forwards_appvms_through_the_tunnel_only(topo: QubesTopology) -> None:
    policy = connected(topo)
    install(topo, policy)
    tunnel = topo.tunnels[0]
    peer_web = topo.responders[-2]
    with topo.capture() as cap:
        for app in topo.appvms:
            web = topo.probe(app.ns, topo.web4, 80)
            assert web.reply == b"tunnel web", (app.vif, web)
            for virtual in topo.virtual_dns:
                dns = topo.probe(app.ns, virtual, 53, proto="udp")
                assert dns.reply == b"vpn dns", (app.vif, virtual, dns)
            # IPv6 without tunnel IPv6, other AppVMs: refused at once
            for address in (topo.web6, next(a for a in topo.appvms if a is not app).ip4):
                probe = topo.probe(app.ns, address, 80)
                assert probe.failed_fast, (app.vif, address, probe)
        # sys-vpn's own unmarked processes stay off the uplink (the endpoint route is eth0)
        own = topo.probe(topo.sysvpn, topo.server4, VPN_PORT, proto="udp")
        assert own.failed_fast, own
        marked = topo.probe(topo.sysvpn, topo.server4, VPN_PORT, proto="udp", mark=DEFAULT_MARK)
        assert marked.reply == b"vpn server", marked
    assert set(peer_web.seen) == {str(tunnel.local4)}, "masqueraded to the tunnel address"
    sent = cap.frames_from_sysvpn()
    assert {(f.dst, f.dport) for f in sent} == {(str(topo.server4), VPN_PORT)}, [
        str(f) for f in sent
    ]
    assert topo.offload_candidates() == 0


def test_connected_drops_spoofed_sources(topo: QubesTopology) -> None:
    install(topo, connected(topo))
    peer_web = topo.responders[-2]
    app = topo.appvms[0]
    spoofed = ipaddress.IPv4Address("10.137.0.99")  # a compromised AppVM takes another address
    app.ns.run(["ip", "addr", "add", f"{spoofed}/32", "dev", "eth0"])
    probe = topo.probe(app.ns, topo.web4, 80, source=spoofed, timeout=1.0)
    assert probe.outcome == "timeout", probe  # dropped silently, no answer to a forged source
    chain = topo.sysvpn.run(["nft", "list", "chain", "inet", "qubes-miragevpn", "prerouting"])
    antispoof = next(line for line in chain.stdout.splitlines() if "/connected-ips is" in line)
    assert "counter packets 0 " not in antispoof, chain.stdout
    assert str(spoofed) not in peer_web.seen
    ok = topo.probe(app.ns, topo.web4, 80)
    assert ok.reply == b"tunnel web"


def test_connected_with_tunnel_ipv6_forwards_appvm_ipv6(topo: QubesTopology) -> None:
    install(topo, connected(topo, ipv6=True))
    with topo.capture() as cap:
        web6 = topo.probe(topo.appvms[0].ns, topo.web6, 80)
        assert web6.reply == b"tunnel web6", web6
    assert cap.frames_from_sysvpn() == []


def test_connected_without_tunnel_dns_refuses_appvm_dns(topo: QubesTopology) -> None:
    install(topo, connected(topo, dns=False))
    with topo.capture() as cap:
        for virtual in topo.virtual_dns:
            probe = topo.probe(topo.appvms[0].ns, virtual, 53, proto="udp")
            assert probe.failed_fast, probe
        web = topo.probe(topo.appvms[0].ns, topo.web4, 80)
        assert web.reply == b"tunnel web"
    assert cap.frames_from_sysvpn() == []


def test_back_to_blocked_cuts_established_tunnel_flows(topo: QubesTopology) -> None:
    install(topo, connected(topo))
    app = topo.appvms[0]
    assert topo.probe(app.ns, topo.web4, 80).reply == b"tunnel web"
    install(topo, Blocked())
    with topo.capture() as cap:
        assert topo.probe(app.ns, topo.web4, 80).failed_fast
    assert cap.frames_from_sysvpn() == []


def test_unblock_hands_forwarding_back_to_qubes(topo: QubesTopology) -> None:
    install(topo, Blocked())
    assert topo.probe(topo.appvms[0].ns, topo.web4, 80).failed_fast
    topo.sysvpn.call(remove_all)
    assert topo.sysvpn.call(read_back) is None
    assert topo.probe(topo.appvms[0].ns, topo.web4, 80).reply == b"uplink web"


def test_connected_clamps_the_mss_of_appvm_syns_to_the_tunnel_mtu(topo: QubesTopology) -> None:
    policy = connected(topo)
    install(topo, policy)
    tunnel = topo.tunnels[0]
    with topo.capture(tunnel.ns, "eth0", tunnel.local4) as cap:
        assert topo.probe(topo.appvms[0].ns, topo.web4, 80).reply == b"tunnel web"
    syns = [f for f in cap.frames if f.dport == 80 and f.tcp_flags & 0x12 == 0x02]
    assert syns and {f.mss for f in syns} == {tunnel.mtu - 40}, [str(f) for f in cap.frames]


@pytest.mark.parametrize("state", ["blocked", "connected"])
def test_nothing_from_outside_opens_a_connection_to_an_appvm(
    topo: QubesTopology, state: str
) -> None:
    """A user rule in Qubes' custom-forward lets sys-net (and the tunnel) reach an AppVM
    service; our table must still drop it: an accept elsewhere cannot overrule our drop."""
    app = topo.appvms[0]
    listener = topo.serve(app.ns, app.ip4, 8080, tag=b"appvm service")
    topo.sysnet.run(["ip", "route", "add", "10.137.0.0/24", "via", str(topo.sysvpn4), "dev",
                     topo.sysnet_vif, "onlink"])  # fmt: skip
    topo.sysvpn.run(["nft", "add", "rule", "ip", "qubes", "custom-forward", "accept"])
    sources = [topo.sysnet]
    policy: Policy = Blocked()
    if state == "connected":
        policy = connected(topo)
        tunnel = topo.tunnels[0]
        tunnel.ns.run(["ip", "route", "add", "10.137.0.0/24", "via", str(tunnel.local4)])
        sources.append(tunnel.ns)
    for source in sources:  # the probes can succeed: Qubes alone lets them in now
        assert topo.probe(source, app.ip4, 8080).reply == b"appvm service", source.name
    seen = len(listener.seen)
    install(topo, policy)
    for source in sources:
        for proto in ("tcp", "udp"):
            probe = topo.probe(source, app.ip4, 8080, proto=proto, timeout=1.0)
            assert probe.outcome == "timeout", (source.name, proto, probe)
    assert len(listener.seen) == seen


def test_connecting_to_an_ipv6_endpoint(topo: QubesTopology) -> None:
    topo.serve(topo.sysnet, topo.server6, VPN_PORT, tag=b"vpn server6")
    ep6 = Endpoint(address=topo.server6, port=VPN_PORT, proto="tcp")
    install(topo, Connecting(endpoints=(ep6,)))
    with topo.capture() as cap:
        marked = topo.probe(topo.sysvpn, topo.server6, VPN_PORT, mark=DEFAULT_MARK)
        assert marked.reply == b"vpn server6", marked
        unmarked = topo.probe(topo.sysvpn, topo.server6, VPN_PORT)
        assert unmarked.failed_fast, unmarked
        other = topo.probe(topo.sysvpn, topo.web6, 80, mark=DEFAULT_MARK)
        assert other.failed_fast, other
    for frame in cap.frames_from_sysvpn():
        if frame.proto == 58:
            assert frame.icmp_type in (135, 136), str(frame)  # neighbour discovery only
        else:
            assert (frame.dst, frame.dport) == (str(topo.server6), VPN_PORT), str(frame)


def test_a_flow_through_the_tunnel_never_falls_back_to_the_uplink(topo: QubesTopology) -> None:
    """Conntrack state does not matter: when the tunnel routes vanish while Connected is still
    in force, the next packet of an established flow routes to eth0 and must be refused."""
    install(topo, connected(topo))
    app = topo.appvms[0]

    def open_flow() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2.0)
        sock.connect((str(topo.web4), 80))
        return sock

    sock = app.ns.call(open_flow)
    try:
        sock.send(b"first")
        assert sock.recv(100) == b"tunnel web"
        for half in ("0.0.0.0/1", "128.0.0.0/1"):
            topo.sysvpn.run(["ip", "route", "del", half])
        with topo.capture() as cap:
            sock.send(b"second")
            with pytest.raises(OSError):
                sock.recv(100)  # an ICMP error (refused) or nothing at all
        assert cap.frames_from_sysvpn() == []
    finally:
        sock.close()


def tracked_flows() -> list[tuple[str, int, int]]:
    """(source, destination port, protocol) of every tracked connection in this namespace."""
    ct = Conntrack()
    try:
        return [
            (e.tuple_orig.saddr, e.tuple_orig.dport, e.tuple_orig.proto) for e in ct.dump_entries()
        ]
    finally:
        ct.close()


def test_flushing_connections_ends_flows_that_predate_the_firewall(topo: QubesTopology) -> None:
    """An AppVM flow set up before our table (service enabled while AppVMs are online) is
    tracked, and would be offloaded by qubes-nat-accel past our forward chain on a kernel with
    flowtables; the flush ends it, so its next packet meets the kill switch."""
    app = topo.appvms[0]

    def open_flow() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)
        sock.connect((str(topo.web4), 80))
        return sock

    sock = app.ns.call(open_flow)
    try:
        sock.send(b"before")
        assert sock.recv(100) == b"uplink web"  # Qubes alone forwards it
        flow = (str(app.ip4), 80, 17)
        assert flow in topo.sysvpn.call(tracked_flows)
        install(topo, Blocked())
        assert flow in topo.sysvpn.call(tracked_flows)  # our table alone does not end it
        assert topo.sysvpn.call(flush_connections) >= 1
        assert flow not in topo.sysvpn.call(tracked_flows)
        with topo.capture() as cap:
            sock.send(b"after")
            with pytest.raises(OSError):
                sock.recv(100)
        assert cap.frames_from_sysvpn() == []
    finally:
        sock.close()


def test_without_connected_ips6_appvm_ipv6_is_refused_blocked_and_tunnelled_connected(
    topo: QubesTopology,
) -> None:
    """A QubesDB that lists only /connected-ips: no IPv6 anti-spoofing of ours (Qubes' own
    stays), AppVM IPv6 still refused at once when Blocked, and through a tunnel with IPv6."""
    facts = dataclasses.replace(topo.facts(), connected_ips=frozenset(a.ip4 for a in topo.appvms))
    app = topo.appvms[0]
    install(topo, Blocked(), facts)
    assert topo.probe(app.ns, topo.web6, 80).failed_fast
    install(topo, connected(topo, ipv6=True), facts)
    with topo.capture() as cap:
        assert topo.probe(app.ns, topo.web6, 80).reply == b"tunnel web6"
    assert cap.frames_from_sysvpn() == []
