"""The blocked-traffic report against the real daemon in the simulated Qubes topology
(tests/helpers/gateway.py), with a real OpenVPN 2.6 server: refused AppVM flows show in
`qubes-miragevpn status --json` with the AppVM's name and the destination, and in one log line;
SIGKILLing the daemon while AppVMs keep sending lets nothing out; the report does not slow the
tunnel (small-packet rate with and without the report rules, printed).

The mode is `--blocked-report auto`: the NFQUEUE when the kernel has nftables' queue expression
and netfilterqueue is installed, else the nftables counters. `test_the_mode_is_what_the_machine_
offers` says which one ran; a kernel without CONFIG_NFT_QUEUE (the one these tests were written
on) exercises the counters.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from qubes_miragevpn.gateway import nft
from tests.helpers.gateway import (
    UDP,
    World,
    assert_no_leaks,
    built_world,
    busy,
    probe_everything,
    start_server,
)
from tests.helpers.netns import wait_until

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(600)]

RATE_SECONDS = 2.0  # of small UDP packets, AppVM -> the web host through the tunnel
SINK_PORT = 9


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """appvm1 is named work-vm by dom0's vm-config.miragevpn-names; appvm2 has no name."""
    with built_world(tmp_path_factory.mktemp("blocked"), {"udp.ovpn": (UDP, ())}) as world:
        with world.facts_path.open("a") as facts:
            work = world.topo.appvms[0]
            facts.write(f"/vm-config/miragevpn-names: '{work.ip4}=work-vm {work.ip6}=work-vm'\n")
        yield world


def status(world: World) -> dict[str, Any]:
    done = world.control("status", "--json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def wait_for_socket(world: World) -> None:
    wait_until(lambda: (world.control_dir / "control.sock").exists(), 15, interval=0.05,
               what="the control socket")  # fmt: skip


def entries_to(world: World, port: int) -> list[dict[str, Any]]:
    return [
        e
        for e in status(world)["blocked_traffic"]
        if e["destination"] == {"proto": "tcp", "address": str(world.topo.leak4), "port": port}
    ]


def ipv6_entries(world: World) -> list[dict[str, Any]]:
    return [e for e in status(world)["blocked_traffic"] if ":" in e["destination"]["address"]]


def test_the_mode_is_what_the_machine_offers(world: World) -> None:
    world.start_daemon()
    wait_for_socket(world)
    has_queue = world.topo.sysvpn.call(lambda: nft.kernel_has_queue(backend=nft.NftCommand()))
    try:
        import netfilterqueue  # noqa: F401

        module = True
    except ImportError:
        module = False
    mode = status(world)["blocked_report"]
    print(f"\n[blocked report] mode {mode} (kernel queue: {has_queue}, module: {module})")
    assert mode == ("queue" if has_queue and module else "counters")
    listing = world.topo.sysvpn.run(["nft", "list", "table", "inet", "qubes-miragevpn"]).stdout
    assert "set blocked-ipv4" in listing and "set blocked-ipv6" in listing, listing


def test_blocked_flows_are_named_in_status_and_logged_once(world: World) -> None:
    """No server yet: the daemon is blocked or connecting. work-vm tries 203.0.113.66:443
    three times, appvm2 once: status names both, the log has one line for work-vm's."""
    topo = world.topo
    with topo.capture() as cap:
        for _ in range(3):
            probe = topo.probe(topo.appvms[0].ns, topo.leak4, 443, timeout=0.5)
            assert probe.outcome != "ok", probe
        topo.probe(topo.appvms[1].ns, topo.leak4, 8443, timeout=0.5)
        topo.probe(topo.appvms[0].ns, topo.leak6, 993, timeout=0.5)
        wait_until(lambda: entries_to(world, 443) and entries_to(world, 8443)
                   and ipv6_entries(world), 10, interval=0.2,
                   what="the refused flows in status")  # fmt: skip
    assert_no_leaks(world, cap, "blocked, AppVMs reported")
    (work,) = entries_to(world, 443)
    assert work["source"] == {"address": str(topo.appvms[0].ip4), "name": "work-vm"}, work
    assert work["packets"] >= 1 and work["first_seen"] and work["last_seen"], work
    (other,) = entries_to(world, 8443)
    assert other["source"] == {"address": str(topo.appvms[1].ip4), "name": None}, other
    line = f"work-vm tried to reach {topo.leak4}:443 (tcp) while the tunnel was down"
    wait_until(lambda: line in world.daemon_log(), 10, interval=0.2, what="the log line")
    assert world.daemon_log().count(line) == 1, world.daemon_log()[-3000:]
    assert f"AppVM {topo.appvms[1].ip4} tried to reach {topo.leak4}:8443" in world.daemon_log()
    (six,) = ipv6_entries(world)
    assert six["source"] == {"address": str(topo.appvms[0].ip6), "name": "work-vm"}, six
    assert six["destination"] == {"proto": "tcp", "address": str(topo.leak6), "port": 993}
    assert f"work-vm tried to reach [{topo.leak6}]:993 (tcp)" in world.daemon_log()
    text = world.control("status").stdout
    assert f"work-vm ({topo.appvms[0].ip4}) -> {topo.leak4}:443/tcp" in text, text


def test_sigkill_while_appvms_send_leaks_nothing_and_stays_blocked(world: World) -> None:
    """The daemon SIGKILLed while AppVMs keep opening refused flows (the queue, if it is the
    mode, has packets in it): nothing on the uplink, the AppVMs stay blocked, and the report
    rules are still there doing their part without anyone reading them."""
    topo = world.topo
    with busy(world):
        with topo.capture() as cap:
            for port in range(20000, 20040):  # new flows, so the queue (if any) is fed
                topo.probe(topo.appvms[0].ns, topo.leak4, port, timeout=0.05)
            world.kill_daemon()
        assert_no_leaks(world, cap, "daemon SIGKILLed with AppVMs sending")
        with topo.capture() as after:  # no daemon: not even the session may leave
            deadline = time.monotonic() + 3.0
            port = 21000
            while time.monotonic() < deadline:
                probe = topo.probe(topo.appvms[0].ns, topo.leak4, port, timeout=0.2)
                assert probe.outcome != "ok", probe
                port += 1
            probe_everything(world)
            assert world.fetch() is None
    assert after.frames_from_sysvpn() == [], after.frames_from_sysvpn()[:10]
    listing = topo.sysvpn.run(["nft", "list", "table", "inet", "qubes-miragevpn"]).stdout
    assert "blocked-ipv4" in listing


def udp_rate(world: World, seconds: float) -> float:
    """Small UDP datagrams per second from appvm1 to the web host through the tunnel, as the
    receiver in sys-net counts them (the sender paces itself so it never outruns the path)."""
    topo = world.topo
    sink = topo.sysnet.call(lambda: _sink(str(topo.web4)))
    sender = topo.appvms[0].ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        sender.connect((str(topo.web4), SINK_PORT))
        sender.setblocking(False)
        received = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            for _ in range(16):
                try:
                    sender.send(b"x" * 32)
                except BlockingIOError:
                    break
            while True:
                try:
                    sink.recv(64)
                    received += 1
                except BlockingIOError:
                    break
            time.sleep(0.0005)
        time.sleep(0.2)
        while True:
            try:
                sink.recv(64)
                received += 1
            except BlockingIOError:
                break
        return received / seconds
    finally:
        sender.close()
        sink.close()


def _sink(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((address, SINK_PORT))
    sock.setblocking(False)
    return sock


def test_the_report_does_not_slow_the_tunnel(world: World) -> None:
    """Packets into the tunnel are accepted before the report rules, so the rate through the
    tunnel with them equals the rate without: measured with `--blocked-report off` and with
    the mode in force, twice each in alternation; printed, and only sanity-checked."""
    start_server(world, "udp", UDP)
    rates: dict[str, list[float]] = {"off": [], "auto": []}
    for mode in ("off", "auto", "off", "auto"):
        started = world.start_daemon("--blocked-report", mode)
        wait_for_socket(world)
        world.wait_through_tunnel(started, f"connect, report {mode}", report=False)
        if mode == "auto":
            assert status(world)["blocked_report"] in ("queue", "counters")
        rates[mode].append(udp_rate(world, RATE_SECONDS))
        world.stop_daemon()
    off, on = max(rates["off"]), max(rates["auto"])
    print(f"\n[blocked report] tunnel rate, 32-byte UDP: without report {rates['off']} pkt/s,"
          f" with report {rates['auto']} pkt/s (best: {off:.0f} vs {on:.0f})")  # fmt: skip
    assert off > 100 and on > 100, rates
    assert on > 0.5 * off, rates  # a generous bound: the numbers are the report's
