"""The control plane: the pure status snapshot, the request handler, the root-only socket, the
daemon's `view()` and `reconnect()` through the scripted-session harness of test_daemon."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from miragevpn.errors import AuthFailed
from qubes_miragevpn.gateway import cli, control
from qubes_miragevpn.gateway.control import Traffic, View, snapshot
from qubes_miragevpn.gateway.daemon import ExitCode
from qubes_miragevpn.gateway.lifecycle import Asking, Dialing, Held, Up, Waiting
from qubes_miragevpn.gateway.policy import Endpoint, Tunnel

from .test_daemon import SERVER, Harness, end, fast_backoff, run, settings  # noqa: F401

ENDPOINT = Endpoint(address=ipaddress.ip_address("198.51.100.1"), port=1194, proto="udp")
TUNNEL = Tunnel(device="miragevpn0", mtu=1500, ipv6=False, dns=(), endpoint=ENDPOINT)
T0 = 1_800_000_000.0


def view(phase: Any, **changes: Any) -> View:
    return View(phase=phase, since=T0, profile="work.ovpn", **changes)


def test_blocked_snapshot_says_why_and_has_no_server() -> None:
    s = snapshot(view(Waiting(reason="server gone", retry_in=4.0)), now=T0 + 12.4)
    assert s["state"] == "blocked"
    assert s["why"] == "blocked: server gone; reconnecting in 4s"
    assert s["retry_in"] == 4.0 and s["held"] is False
    assert s["server"] is None and s["tunnel_addresses"] == [] and s["traffic"] is None
    assert s["since"] == "2027-01-15T08:00:00+00:00" and s["seconds_in_state"] == 12
    json.dumps(s)  # plain JSON values only


def test_held_connecting_and_connected_snapshots() -> None:
    held = snapshot(view(Held(reason="AUTH_FAILED")), now=T0)
    assert held["state"] == "blocked" and held["held"] is True and "AUTH_FAILED" in held["why"]
    dialing = snapshot(view(Dialing(endpoint=ENDPOINT)), now=T0)
    assert dialing["state"] == "connecting"
    assert dialing["server"] == {"address": "198.51.100.1", "port": 1194, "proto": "udp"}
    up = snapshot(
        view(
            Up(tunnel=TUNNEL, summary="10.8.0.2/24"),
            addresses=("10.8.0.2/24",),
            traffic=Traffic(bytes_out=10, packets_out=1, bytes_in=20, packets_in=2),
            last_handshake=T0,
            last_renegotiation=T0 + 60,
            renegotiations=1,
            last_error="server gone",
            last_error_at=T0 - 5,
        ),
        now=T0 + 61,
    )
    assert up["state"] == "connected" and up["server"]["proto"] == "udp"
    assert up["tunnel_addresses"] == ["10.8.0.2/24"]
    assert up["traffic"] == {"bytes_out": 10, "packets_out": 1, "bytes_in": 20, "packets_in": 2}
    assert up["last_renegotiation"] == "2027-01-15T08:01:00+00:00"
    assert up["renegotiations"] == 1 and up["last_error"] == "server gone"
    text = control.render(up)
    assert "state: connected" in text and "server: 198.51.100.1 port 1194 over udp" in text
    assert "out 1 packets (10 bytes), in 2 packets (20 bytes)" in text


def test_status_fields_are_the_documented_ones() -> None:
    documented = Path(__file__).parents[3] / "docs" / "status.md"
    text = documented.read_text(encoding="utf-8")
    fields = snapshot(view(Up(tunnel=TUNNEL, summary="x"), traffic=Traffic()), now=T0)
    for name in [*fields, *fields["traffic"]]:
        assert f"`{name}`" in text, f"{name} is not in docs/status.md"


def test_tun_counters_are_read_from_sysfs(tmp_path: Path) -> None:
    base = tmp_path / "tun0" / "statistics"
    base.mkdir(parents=True)
    for name, value in (("tx_bytes", 5), ("tx_packets", 1), ("rx_bytes", 7), ("rx_packets", 2)):
        (base / name).write_text(f"{value}\n")
    assert control.read_tun_traffic("tun0", sysfs=tmp_path) == Traffic(
        bytes_out=5, packets_out=1, bytes_in=7, packets_in=2
    )
    assert control.read_tun_traffic("gone", sysfs=tmp_path) is None


class FakeDaemon:
    def __init__(self) -> None:
        self.reconnects = 0
        self.codes: list[str] = []

    def answer(self, code: str) -> str | None:
        if self.codes:
            return "no one-time code is asked for now"
        self.codes.append(code)
        return None

    def view(self) -> View:
        return view(Waiting(reason="starting"))

    def reconnect(self) -> None:
        self.reconnects += 1


def test_handle_answers_each_command_and_refuses_the_rest() -> None:
    d = FakeDaemon()
    chosen: list[str] = []
    assert control.handle({"command": "status"}, d, chosen.append, now=T0)["status"]["state"] == (
        "blocked"
    )
    assert control.handle({"command": "reconnect"}, d, None, now=T0) == {"ok": True}
    assert d.reconnects == 1
    assert control.handle({"command": "profile", "name": "b.ovpn"}, d, chosen.append, now=T0)["ok"]
    assert chosen == ["b.ovpn"]
    assert not control.handle({"command": "profile"}, d, chosen.append, now=T0)["ok"]
    assert not control.handle({"command": "profile", "name": "x"}, d, None, now=T0)["ok"]
    refused = control.handle({"command": "rm -rf"}, d, None, now=T0)
    assert refused["ok"] is False and "unknown command" in refused["error"]
    for code in (None, "", 7, "1\n2"):
        bad = {"command": "answer"} if code is None else {"command": "answer", "code": code}
        answer = control.handle(bad, d, None, now=T0)
        assert answer == {"ok": False, "error": "answer: give the one-time code"}, bad
    assert control.handle({"command": "answer", "code": "123456"}, d, None, now=T0) == {"ok": True}
    assert d.codes == ["123456"]
    late = control.handle({"command": "answer", "code": "1"}, d, None, now=T0)
    assert late == {"ok": False, "error": "answer: no one-time code is asked for now"}


def test_asking_snapshot_says_what_is_asked_and_how_long_is_left() -> None:
    asking = Asking(text="Enter the code", dynamic=True, timeout=300)
    s = snapshot(view(asking), now=T0 + 20)
    assert s["state"] == "blocked" and s["held"] is False
    assert s["why"].startswith("waiting for a one-time code: Enter the code (blocked;")
    assert s["one_time_code"] == {"text": "Enter the code", "dynamic": True, "seconds_left": 280}
    assert snapshot(view(Waiting(reason="x")), now=T0)["one_time_code"] is None
    assert "one-time code wanted: Enter the code" in control.render(s)


def test_socket_is_root_only_and_answers_json(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    d = FakeDaemon()

    async def scenario() -> None:
        server = control.ControlServer(d, directory=directory)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
            answer = await asyncio.to_thread(
                control.request, {"command": "status"}, directory=directory
            )
            assert answer["ok"] and answer["status"]["state"] == "blocked"
            assert (
                await asyncio.to_thread(
                    control.request, {"command": "reconnect"}, directory=directory
                )
            )["ok"]
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(b"not json\n")
            bad = json.loads(await reader.readline())
            writer.close()
            assert bad["ok"] is False and "not JSON" in bad["error"]
        finally:
            await server.close()
        assert not server.path.exists()

    run(scenario())
    assert d.reconnects == 1
    with pytest.raises(control.ControlError, match="not running"):
        control.request({"command": "status"}, directory=directory)


def test_profile_selector_writes_the_facts_file(tmp_path: Path) -> None:
    (tmp_path / "a.ovpn").write_text("")
    (tmp_path / "b.ovpn").write_text("")
    facts = tmp_path / "facts.yaml"
    facts.write_text("/qubes-ip: 10.137.0.5\n/vm-config/miragevpn-profile: a.ovpn\n")
    select = cli.profile_selector(facts, tmp_path)
    select("b.ovpn")
    written = yaml.safe_load(facts.read_text())
    assert written == {"/qubes-ip": "10.137.0.5", "/vm-config/miragevpn-profile": "b.ovpn"}
    for bad in ("c.ovpn", "../a.ovpn", ".hidden"):
        with pytest.raises(ValueError, match="no profile"):
            select(bad)
    with pytest.raises(ValueError, match="dom0"):
        cli.profile_selector(None, tmp_path)("a.ovpn")


def test_daemon_view_follows_the_session_and_reconnect_leaves_held() -> None:
    h = Harness(
        [
            [("connect", SERVER), ("up", settings()), end("AUTH_FAILED", AuthFailed("bad"))],
            [("connect", SERVER), ("hold", None)],
        ]
    )

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Held))
        s = snapshot(h.daemon.view(), now=h.daemon.view().since)
        assert s["state"] == "blocked" and s["held"] and s["profile"] == "test.ovpn"
        assert s["last_handshake"] is not None and "AUTH_FAILED" in (s["last_error"] or "")
        h.daemon.reconnect()
        await h.until(lambda: len(h.sessions) == 2 and isinstance(h.daemon.phase, Dialing))
        s = snapshot(h.daemon.view(), now=h.daemon.view().since)
        assert s["state"] == "connecting" and s["server"]["address"] == str(SERVER)
        h.daemon.stop()
        assert await task is ExitCode.OK

    run(scenario())
