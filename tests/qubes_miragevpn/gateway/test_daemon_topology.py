"""The real daemon in a simulated Qubes topology, against a real OpenVPN 2.6 server in sys-net.

    sys-net  (the "internet": web 198.51.100.80, the VPN's resolver 198.51.100.53, the uplink
              resolvers 10.139.1.1/.2, leak targets; the OpenVPN servers on 198.51.100.1)
      ║ eth0 (group 1), captured on sys-net's side
    sys-vpn  (Qubes' own tables; `qubes-miragevpn block`, then `qubes-miragevpn run`)
      ║ vif11.0, vif12.0 (group 2)
    appvm1, appvm2

Every answer carries a tag naming who answered, and the servers record the source address:
the web server seeing the tunnel address 10.8.0.x (10.9.0.x for the second profile) proves the
AppVM's packets went through the tunnel; the capture on the uplink proves nothing else left
sys-vpn: every frame sys-vpn sends must be the encrypted session to the server's endpoint.

The first tests share one world (module fixture) and run in order: boot (block first), the
daemon ready while the server is down, connected, server restart, renegotiation, uplink flap,
SIGKILL and restart, profile switch, /connected-ips change, stop. Each leaves the gateway
connected for the next, except the last. Then worlds of their own: AUTH_FAILED, a hostname
remote resolved through the uplink, a server HALT, an IPv6 server endpoint. Recovery times are
printed (-s) and asserted loosely (the strict numbers are the benchmark's).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers.gateway import (
    RECOVERY_LIMIT,
    TCP,
    UDP,
    World,
    assert_no_leaks,
    built_world,
    busy,
    probe_everything,
    start_server,
)
from tests.helpers.netns import wait_until
from tests.helpers.qubes_topology import A4, A6, Capture

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    profiles = {"udp.ovpn": (UDP, ()), "tcp.ovpn": (TCP, ())}
    with built_world(tmp_path_factory.mktemp("gateway"), profiles) as world:
        yield world
        print("\n[recovery] " + ", ".join(f"{k}: {v:.2f} s" for k, v in world.timings.items()))


def test_boot_blocks_before_anything_and_nothing_leaves(world: World) -> None:
    """`qubes-miragevpn block` (the boot oneshot) first: with forwarding on and no daemon, the
    AppVMs are refused at once and not one packet reaches sys-net."""
    done = world.topo.sysvpn.run(
        world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path)), check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with world.topo.capture() as cap:
        probe = world.topo.probe(world.topo.appvms[0].ns, world.topo.web4, 80)
        probe_everything(world)
    assert probe.outcome != "ok" and probe.failed_fast, probe
    assert_no_leaks(world, cap, "blocked at boot, no daemon")
    assert cap.frames_from_sysvpn() == []
    assert world.web.seen == []


def test_ready_means_blocked_and_running_not_connected(world: World) -> None:
    """READY=1 comes once Blocked is verified, while the server is still down; the tunnel
    comes up when the server does, and only then do the AppVMs get through."""
    with world.topo.capture() as cap:
        started = world.start_daemon()
        ready = wait_until(lambda: world.notify.first("READY=1", started), 20,
                           what="READY=1 from the daemon")  # fmt: skip
        print(f"\n[start] READY=1 {ready - started:.2f} s after the daemon started")
        time.sleep(1.0)
        assert world.fetch() is None  # ready, but blocked: no server yet
        probe_everything(world)
    assert_no_leaks(world, cap, "daemon ready, server down")
    assert "blocked" in world.notify.status(), world.notify.status()
    server = start_server(world, "udp", UDP)
    assert server.proc is not None
    world.wait_through_tunnel(time.monotonic(), "first connect")
    watchdogs = [m for _, m in world.notify.messages if "WATCHDOG=1" in m]
    assert watchdogs, "no WATCHDOG=1 from the loop"


def test_connected_appvms_use_the_tunnel_and_the_vpns_dns_only(world: World) -> None:
    topo = world.topo
    seen_before = len(world.web.seen)
    with world.topo.capture() as cap:
        for app in topo.appvms:
            probe = topo.probe(app.ns, topo.web4, 80)
            assert probe.outcome == "ok" and probe.reply == b"web", probe
            dns = topo.probe(app.ns, topo.virtual_dns[0], 53, proto="udp")
            assert dns.outcome == "ok" and dns.reply == b"vpn-dns", dns
            dns2 = topo.probe(app.ns, topo.virtual_dns[1], 53, proto="udp")
            assert dns2.reply == b"vpn-dns", dns2
            leak = topo.probe(app.ns, topo.leak4, 80, timeout=1.0)
            assert leak.outcome != "ok"  # nothing listens there behind the tunnel either
    new = world.web.seen[seen_before:]
    assert new and all(a.startswith("10.8.0.") for a in new), new  # the tunnel address
    assert world.vpn_dns.seen and all(a.startswith("10.8.0.") for a in world.vpn_dns.seen)
    assert all(r.seen == [] for r in world.uplink_dns), "AppVM DNS reached the uplink resolver"
    assert_no_leaks(world, cap, "connected")
    session = [f for f in cap.frames_from_sysvpn() if f.dport == UDP.port]
    assert session, "the AppVMs' traffic must have gone out as the encrypted session"
    assert world.notify.status().startswith("connected: "), world.notify.status()


def test_server_stop_and_restart(world: World) -> None:
    server = world.servers["udp"]
    with world.topo.capture() as cap, busy(world) as outcomes:
        server.stop()
        time.sleep(3.0)
        assert world.fetch() is None
        probe_everything(world)
        server.spawn()
        server.wait_ready()
        seconds = world.wait_through_tunnel(time.monotonic(), "server restarted")
    assert_no_leaks(world, cap, "server stopped and restarted")
    assert "ok" in outcomes
    assert seconds < RECOVERY_LIMIT


def test_renegotiation_keeps_traffic_in_the_tunnel(world: World) -> None:
    server = world.servers["udp"]
    before = server.log_text().count("TLS: soft reset")
    with world.topo.capture() as cap, busy(world) as outcomes:
        wait_until(lambda: server.log_text().count("TLS: soft reset") > before, 45,
                   interval=0.5, what="a key renegotiation (reneg-sec 30)")  # fmt: skip
        time.sleep(1.0)
        world.wait_through_tunnel(time.monotonic(), "after renegotiation")
    assert_no_leaks(world, cap, "renegotiation")
    assert outcomes.count("ok") > len(outcomes) // 2, outcomes


def test_uplink_down_and_up(world: World) -> None:
    topo, vpn = world.topo, world.topo.sysvpn
    with world.topo.capture() as cap, busy(world):
        vpn.run(["ip", "link", "set", topo.uplink, "down"])
        time.sleep(2.0)
        vpn.run(["ip", "link", "set", topo.uplink, "up"])
        back = time.monotonic()
        # Qubes' setup-ip puts back its neighbour entry, link route and default route only
        vpn.run(["ip", "neigh", "replace", str(topo.gateway4), "lladdr", "fe:ff:ff:ff:ff:ff",
                 "dev", topo.uplink, "nud", "permanent"])  # fmt: skip
        vpn.run(["ip", "route", "replace", str(topo.gateway4), "dev", topo.uplink, "scope", "link"])
        vpn.run(["ip", "route", "replace", "default", "via", str(topo.gateway4), "dev",
                 topo.uplink, "onlink"])  # fmt: skip
        seconds = world.wait_through_tunnel(back, "uplink back")
    routes = vpn.run(["ip", "route", "show", str(topo.server4)]).stdout
    assert "via 10.137.0.5" in routes and topo.uplink in routes, routes
    assert_no_leaks(world, cap, "uplink flap")
    assert seconds < RECOVERY_LIMIT


def test_sigkill_and_restart(world: World) -> None:
    with world.topo.capture() as cap, busy(world):
        world.kill_daemon()
        time.sleep(1.0)
        assert world.fetch() is None  # the table outlives the daemon: still closed
        probe_everything(world)
        started = world.start_daemon()
        seconds = world.wait_through_tunnel(started, "restart after SIGKILL")
    assert_no_leaks(world, cap, "SIGKILL and restart")
    assert seconds < RECOVERY_LIMIT


def test_profile_switch(world: World) -> None:
    start_server(world, "tcp", TCP)
    seen = len(world.web.seen)
    with world.topo.capture() as cap, busy(world):
        world.set_facts(profile="tcp.ovpn")
        switched = time.monotonic()
        wait_until(
            lambda: any(a.startswith("10.9.0.") for a in world.web.seen[seen:]),
            RECOVERY_LIMIT + 5,
            interval=0.1,
            what="traffic through the TCP profile",
        )
        print(f"\n[recovery] profile switch: {time.monotonic() - switched:.2f} s")
    assert_no_leaks(world, cap, "profile switch")
    tcp = [f for f in cap.frames_from_sysvpn() if f.proto == 6 and f.dport == TCP.port]
    assert tcp, "the new profile's session must be TCP to port 443"
    assert "profile changed" in world.daemon_log()


def test_connected_ips_drive_the_anti_spoofing_sets(world: World) -> None:
    """/connected-ips loses appvm2 (its qube stopped, its address may be reused): its traffic
    is dropped from then on, appvm1's goes on; listed again, it works again."""
    seen = len(world.web.seen)
    world.set_facts(appvms=1)
    wait_until(lambda: world.fetch(app=1, timeout=0.3) is None, 10, what="appvm2 dropped")
    assert world.fetch(app=0) == b"web"
    log = world.daemon_log()
    assert "network facts changed" in log
    world.set_facts(appvms=None)
    wait_until(lambda: world.fetch(app=1, timeout=0.5) == b"web", 10, what="appvm2 back")
    assert all(a.startswith("10.9.0.") for a in world.web.seen[seen:]), world.web.seen[seen:]


def test_stop_leaves_everything_blocked(world: World) -> None:
    assert world.stop_daemon() == 0
    with world.topo.capture() as cap:
        assert world.fetch() is None
        probe_everything(world)
    assert cap.frames_from_sysvpn() == []
    table = world.topo.sysvpn.run(["nft", "list", "table", "inet", "qubes-miragevpn"], check=False)
    assert table.returncode == 0, "the blocking table must outlive the daemon"
    # only `unblock` opens it again
    done = world.topo.sysvpn.run(world.qubes_miragevpn("unblock"), check=False)
    assert done.returncode == 0, done.stderr
    gone = world.topo.sysvpn.run(["nft", "list", "table", "inet", "qubes-miragevpn"], check=False)
    assert gone.returncode != 0
    assert ipaddress.ip_address(str(world.topo.server4)) == A4("198.51.100.1")


# ---------------------------------------------------------------- a world of its own


def test_auth_failed_holds_blocked_until_the_profile_changes(tmp_path: Path) -> None:
    """The server refuses the password (AUTH_FAILED): the daemon stays blocked, says why, and
    does not try again; choosing a profile with the right password connects at once."""
    check = tmp_path / "check-password.sh"
    check.write_text('#!/bin/sh\n[ "$(sed -n 2p "$1")" = right ]\n')
    check.chmod(0o755)
    server = replace(
        UDP,
        extra_server=(*UDP.extra_server, "script-security 2",
                      f"auth-user-pass-verify {check} via-file"),
    )  # fmt: skip
    profiles = {
        "wrong.ovpn": (UDP, ("auth-user-pass wrong.pass",)),
        "right.ovpn": (UDP, ("auth-user-pass right.pass",)),
    }
    with built_world(tmp_path, profiles) as world:
        for name, password in (("wrong.pass", "wrong"), ("right.pass", "right")):
            (world.config_dir / name).write_text(f"user\n{password}\n")
            os.chmod(world.config_dir / name, 0o600)
        vpn = start_server(world, "udp", server)
        world.start_daemon()
        wait_until(lambda: "authentication failed" in world.notify.status(), 20,
                   what="the status to say the authentication failed")  # fmt: skip
        status = world.notify.status()
        assert status.startswith("blocked: "), status
        attempts = vpn.log_text().count("TLS: Initial packet from")
        with world.topo.capture() as cap:
            time.sleep(4.0)  # far beyond the first back-off: it must not try again
            assert world.fetch() is None
            probe_everything(world)
        assert vpn.log_text().count("TLS: Initial packet from") == attempts
        assert cap.frames_from_sysvpn() == []
        world.set_facts(profile="right.ovpn")
        world.wait_through_tunnel(time.monotonic(), "after AUTH_FAILED, profile changed")


def test_a_hostname_remote_is_resolved_through_the_uplink_by_the_daemon_alone(
    tmp_path: Path,
) -> None:
    """`remote vpn.example.test`: the daemon asks the uplink's resolver itself (marked socket,
    policy Connecting with uplink DNS only), then connects; the AppVMs' DNS never goes there,
    and the qube's own processes reach it only through the tunnel (docs/security.md)."""
    name = "vpn.example.test"
    with built_world(
        tmp_path, {"named.ovpn": (UDP, ())}, remote=name, uplink_names={name: "198.51.100.1"}
    ) as world:
        resolver = world.uplink_resolver
        assert resolver is not None
        start_server(world, "udp", UDP)
        block = world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path))
        world.topo.sysvpn.run(block)  # boot order: blocked before anything else
        with world.topo.capture() as cap:
            world.start_daemon()
            world.wait_through_tunnel(time.monotonic(), "hostname remote")
            dns = world.topo.probe(world.topo.appvms[0].ns, world.topo.virtual_dns[0], 53,
                                   proto="udp")  # fmt: skip
            assert dns.reply == b"vpn-dns", dns  # the AppVM's DNS: the VPN's, through the tunnel
            world.topo.probe(
                world.topo.sysvpn, world.topo.uplink_dns[0], 53, proto="udp", timeout=0.5
            )  # fmt: skip  (the qube's own, unmarked)
        uplink = [q[1:] for q in resolver.queries if q[0] == str(world.topo.sysvpn4)]
        assert uplink == [(name, 1), (name, 28)], resolver.queries  # the daemon's A and AAAA only
        others = [q for q in resolver.queries if q[0] != str(world.topo.sysvpn4)]
        assert all(q[0].startswith("10.8.0.") for q in others), others  # through the tunnel
        assert_no_leaks_with_dns(world, cap)
        assert "resolving vpn.example.test through the uplink" in world.daemon_log()


def assert_no_leaks_with_dns(world: World, cap: Capture) -> None:
    leaks = world.leaks(cap, uplink_dns=True)
    assert leaks == [], "\n".join(map(str, leaks[:20]))


def management(path: Path, command: str) -> str:
    """One command on an OpenVPN server's management socket; its answer (up to the END,
    SUCCESS: or ERROR: line; '>' lines are notifications and skipped)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        data = b""
        for _ in range(1000):  # bounded; each recv waits at most the timeout
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            lines = [x for x in data.decode(errors="replace").splitlines() if x[:1] != ">"]
            last = lines[-1] if lines and data.endswith(b"\n") else ""
            if last == "END" or last.startswith(("SUCCESS:", "ERROR:")):
                break
        return "\n".join(x for x in data.decode(errors="replace").splitlines() if x[:1] != ">")


def test_server_halt_holds_blocked_until_a_restart(tmp_path: Path) -> None:
    """The server sends HALT (management `client-kill CID HALT`): the daemon stays blocked,
    says why, and does not reconnect; a restart of the daemon connects again."""
    sock = tmp_path / "mgmt.sock"
    server_scenario = replace(UDP, extra_server=(*UDP.extra_server, f"management {sock} unix"))
    with built_world(tmp_path, {"udp.ovpn": (UDP, ())}) as world:
        vpn = start_server(world, "udp", server_scenario)
        world.topo.sysvpn.run(world.qubes_miragevpn("block", "--qubesdb-file",
                                                    str(world.facts_path)))  # fmt: skip
        world.start_daemon()
        world.wait_through_tunnel(time.monotonic(), "before HALT")
        status = management(sock, "status 2")
        header = next(line for line in status.splitlines() if line.startswith("HEADER,CLIENT_LIST"))
        row = next(line for line in status.splitlines() if line.startswith("CLIENT_LIST,"))
        cid = row.split(",")[header.split(",").index("Client ID") - 1]
        assert "SUCCESS" in management(sock, f"client-kill {cid} HALT")
        wait_until(lambda: "halted" in world.notify.status(), 20, what="the status to say HALT")
        assert world.notify.status().startswith("blocked: "), world.notify.status()
        attempts = vpn.log_text().count("TLS: Initial packet from")
        with world.topo.capture() as cap:
            time.sleep(4.0)  # far beyond the first back-off: it must not try again
            assert world.fetch() is None
            probe_everything(world)
        assert vpn.log_text().count("TLS: Initial packet from") == attempts
        assert cap.frames_from_sysvpn() == []
        world.stop_daemon()
        started = world.start_daemon()
        world.wait_through_tunnel(started, "after HALT, daemon restarted")


def test_an_ipv6_server_endpoint(tmp_path: Path) -> None:
    """`remote 2001:db8:100::1 1194 udp6` with an IPv6 uplink (/qubes-ip6, /qubes-gateway6):
    from boot (blocked), the Connecting policy lets out only the session to the IPv6 endpoint,
    the tunnel carries IPv6 too (::/1 and 8000::/1 into it) and the host route keeps the
    server on the uplink's IPv6 gateway, the AppVMs' traffic goes through the tunnel, and
    nothing else leaves sys-vpn, whatever the AppVMs try."""
    topo_server6 = "2001:db8:100::1"
    udp6 = replace(
        UDP,
        client_proto="udp6",
        ipv6=True,
        extra_server=(f"local {topo_server6}", "proto udp6"),
    )
    with built_world(
        tmp_path, {"udp6.ovpn": (udp6, ())}, remote=topo_server6, uplink_ipv6=True
    ) as world:
        topo = world.topo
        assert str(topo.server6) == topo_server6
        start_server(world, "udp6", udp6)
        topo.sysvpn.run(world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path)))
        with topo.capture() as cap:
            started = world.start_daemon()
            world.wait_through_tunnel(started, "IPv6 server endpoint")
            probe_everything(world)
            assert world.fetch() == b"web"
        assert_no_leaks(world, cap, "IPv6 server endpoint")
        session = [f for f in cap.frames_from_sysvpn() if f.dst == topo_server6]
        assert session and all(f.src == str(topo.sysvpn6) and f.proto == 17 for f in session)
        shown = topo.sysvpn.json(["ip", "-j", "-6", "route", "show"])
        routes = {r["dst"]: r for r in shown if r.get("type") != "unreachable"}
        assert routes["::/1"]["dev"] == routes["8000::/1"]["dev"] == "miragevpn0", routes
        host = routes[topo_server6]  # without it, ::/1 would carry the session into itself
        assert (host.get("gateway"), host.get("dev")) == (str(topo.gateway6), topo.uplink)
        route = topo.sysvpn.json(["ip", "-j", "-6", "route", "get", topo_server6])[0]
        assert (route.get("gateway"), route.get("dev")) == (str(topo.gateway6), topo.uplink)
        assert f"connecting to {topo_server6} port 1194 over UDP" in world.daemon_log()


def test_a_dual_stack_hostname_falls_back_from_a_dead_ipv4_to_ipv6(tmp_path: Path) -> None:
    """`remote vpn.example.test 1194 udp`, A 203.0.113.9 (nothing answers there) and AAAA
    2001:db8:100::1 (the server) through the uplink's resolver: the daemon dials the IPv4
    address first (A before AAAA), gives up after server-poll-timeout, then dials the IPv6
    one; Connecting lets out only the endpoint being dialled, nothing else leaves."""
    name, dead4, server6 = "vpn.example.test", "203.0.113.9", "2001:db8:100::1"
    udp = replace(UDP, extra_server=(f"local {server6}", "proto udp6"))
    with built_world(
        tmp_path,
        {"dual.ovpn": (udp, ("server-poll-timeout 4",))},
        remote=name,
        uplink_names={name: f"{dead4},{server6}"},
        uplink_ipv6=True,
        server_addresses=(A4(dead4), A6(server6)),
    ) as world:
        topo = world.topo
        start_server(world, "udp6", udp)
        topo.sysvpn.run(world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path)))
        with topo.capture() as cap:
            started = world.start_daemon()
            world.wait_through_tunnel(started, "dual-stack name, IPv4 dead")
            probe_everything(world)
        assert_no_leaks_with_dns(world, cap)
        log = world.daemon_log()
        assert f"{name} is {dead4}, {server6}" in log, log[-3000:]
        assert log.index(f"connecting to {dead4} port 1194") < log.index(
            f"connecting to {server6} port 1194"
        )
        tried = {f.dst for f in cap.frames_from_sysvpn() if f.proto == 17 and f.dport == 1194}
        assert tried == {dead4, server6}, tried
