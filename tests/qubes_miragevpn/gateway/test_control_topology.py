"""`qubes-miragevpn status / reconnect / profile` and the desktop notifications against the
real daemon in the simulated Qubes topology (tests/helpers/gateway.py), with a real OpenVPN 2.6
server per profile: the answers match what the captures and the web server see, a reconnect or
a profile switch through the control socket leaks nothing on the uplink, and a stand-in
notify-send records the notices the daemon shows the default user."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.gateway import (
    RECOVERY_LIMIT,
    TCP,
    UDP,
    World,
    assert_no_leaks,
    built_world,
    busy,
    start_server,
)
from tests.helpers.netns import wait_until

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the module; /default-user is root and a stand-in notify-send on the
    daemon's PATH records the desktop notices in `world.tmp / "notices"`."""
    tmp = tmp_path_factory.mktemp("control")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nline=$(printf "%s|" "$@")\necho "$line" >> {tmp / "notices"}\n')
    script.chmod(0o755)
    profiles = {"udp.ovpn": (UDP, ()), "tcp.ovpn": (TCP, ())}
    with pytest.MonkeyPatch.context() as mp, built_world(tmp, profiles) as world:
        mp.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/bin')}")
        with world.facts_path.open("a") as facts:
            facts.write("/default-user: root\n")
        yield world


def notices(world: World) -> list[str]:
    """The titles of the desktop notices shown so far."""
    path = world.tmp / "notices"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("|")[4] for line in lines]


def status(world: World) -> dict[str, Any]:
    done = world.control("status", "--json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_status_before_the_daemon_says_it_is_not_running(world: World) -> None:
    done = world.control("status")
    assert done.returncode == 1 and "not running" in done.stderr


def test_status_blocked_then_connected_with_traffic(world: World) -> None:
    world.start_daemon()
    wait_until(lambda: (world.control_dir / "control.sock").exists(), 15, interval=0.05,
               what="the control socket")  # fmt: skip
    first = status(world)
    assert first["state"] in ("blocked", "connecting"), first  # no server yet
    start_server(world, "udp", UDP)
    start_server(world, "tcp", TCP)
    world.wait_through_tunnel(time.monotonic(), "first connect")
    s = status(world)
    assert s["state"] == "connected" and s["profile"] == "udp.ovpn", s
    assert s["server"] == {"address": str(world.topo.server4), "port": UDP.port, "proto": "udp"}
    assert any(a.startswith("10.8.0.") for a in s["tunnel_addresses"]), s
    assert s["traffic"]["packets_out"] > 0 and s["traffic"]["packets_in"] > 0, s
    assert s["last_handshake"] is not None
    text = world.control("status").stdout
    assert "state: connected" in text and f"server: {world.topo.server4} port" in text
    wait_until(lambda: notices(world) == ["VPN connected"], 10, interval=0.1,
               what="the desktop notice 'VPN connected'")  # fmt: skip


def test_reconnect_makes_a_new_tunnel_and_leaks_nothing(world: World) -> None:
    before = status(world)["last_handshake"]
    with world.topo.capture() as cap, busy(world):
        time.sleep(1.1)  # a new handshake time differs from the old one (second resolution)
        done = world.control("reconnect")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: "reconnect requested" in world.daemon_log(), 10, interval=0.05,
                   what="the daemon to reconnect")  # fmt: skip
        world.wait_through_tunnel(time.monotonic(), "reconnect command")
    assert_no_leaks(world, cap, "reconnect command")
    after = status(world)
    assert after["state"] == "connected" and after["last_handshake"] != before, after


def test_profile_switch_through_the_control_socket(world: World) -> None:
    refused = world.control("profile", "nosuch.ovpn")
    assert refused.returncode == 1 and "no profile" in refused.stderr
    seen = len(world.web.seen)
    with world.topo.capture() as cap, busy(world):
        done = world.control("profile", "tcp.ovpn")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: any(a.startswith("10.9.0.") for a in world.web.seen[seen:]),
            RECOVERY_LIMIT + 5,
            interval=0.1,
            what="traffic through the TCP profile",
        )
    assert_no_leaks(world, cap, "profile switch by command")
    assert "/vm-config/miragevpn-profile: tcp.ovpn" in world.facts_path.read_text()
    s = status(world)
    assert s["profile"] == "tcp.ovpn" and s["server"]["proto"] == "tcp", s


def test_server_gone_is_blocked_with_the_error(world: World) -> None:
    world.servers["tcp"].stop()
    wait_until(lambda: status(world)["state"] != "connected", RECOVERY_LIMIT, interval=0.2,
               what="the daemon to notice the server is gone")  # fmt: skip
    s = status(world)
    assert s["tunnel_addresses"] == [] and s["traffic"] is None, s
    assert world.fetch() is None
    assert "VPN disconnected: AppVMs are blocked until the tunnel is back" in world.daemon_log()
    # connect, reconnect, profile switch, server gone: every change is in the journal, but
    # the rate limit shows the same kind at most once per 30 s on the desktop
    log, shown = world.daemon_log(), notices(world)
    for title in ("VPN connected", "VPN disconnected"):
        assert log.count(f"{title}: ") >= 3, log[-3000:]
        assert 1 <= shown.count(title) < log.count(f"{title}: "), shown
