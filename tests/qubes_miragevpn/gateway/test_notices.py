"""Notifications: which phase changes make a notice (pure), the rate limit (pure), and the
Notifier running `runuser -u USER -- notify-send` with a stand-in notify-send on PATH that
records its calls; then the daemon's hook through the scripted-session harness."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path

import pytest

from miragevpn.errors import AuthFailed
from qubes_miragevpn.gateway import notices
from qubes_miragevpn.gateway.lifecycle import Asking, Dialing, Held, Up, Waiting
from qubes_miragevpn.gateway.notices import Kind, Notifier, RateLimit, notice_for
from qubes_miragevpn.gateway.policy import Endpoint, Tunnel

from .test_daemon import SERVER, Harness, end, fast_backoff, run, settings  # noqa: F401

ENDPOINT = Endpoint(address=ipaddress.ip_address("198.51.100.1"), port=1194, proto="udp")
UP = Up(
    tunnel=Tunnel(device="miragevpn0", mtu=1500, ipv6=False, dns=(), endpoint=ENDPOINT),
    summary="10.8.0.2/24",
)


def kinds(*pairs: tuple[object, object]) -> list[Kind | None]:
    out = []
    for old, new in pairs:
        n = notice_for(old, new)  # type: ignore[arg-type]
        out.append(n.kind if n else None)
    return out


def test_notices_for_connect_disconnect_block_and_auth_failed() -> None:
    dialing = Dialing(endpoint=ENDPOINT)
    assert kinds(
        (None, Waiting(reason="starting")),
        (Waiting(reason="starting"), dialing),
        (dialing, UP),
        (UP, UP),
        (UP, Waiting(reason="server gone", retry_in=1)),
        (Waiting(reason="x"), Held(reason="AUTH_FAILED: bad password")),
        (Held(reason="AUTH_FAILED: bad password"), Held(reason="AUTH_FAILED: bad password")),
        (Waiting(reason="x"), Held(reason="no profile in /rw/config/qubes-miragevpn")),
        (UP, Held(reason="HALT")),
    ) == [
        None,
        None,
        Kind.CONNECTED,
        None,
        Kind.DISCONNECTED,
        Kind.AUTH_FAILED,
        None,
        Kind.BLOCKED,
        Kind.BLOCKED,
    ]
    auth = notice_for(None, Held(reason="AUTH_FAILED"))
    assert auth is not None and "reconnect" in auth.body and auth.urgency == "critical"
    gone = notice_for(UP, Waiting(reason="server gone"))
    assert gone is not None and "server gone" in gone.body


def test_a_one_time_code_wanted_is_a_critical_notice_that_says_how_to_answer() -> None:
    asking = Asking(text="Enter the code sent to your phone", dynamic=True, timeout=300)
    assert kinds(
        (Waiting(reason="starting"), asking),
        (asking, asking),
        (UP, asking),
        (asking, Held(reason="no one-time code: no one-time code was given within 300s")),
    ) == [Kind.CODE_WANTED, None, Kind.CODE_WANTED, Kind.BLOCKED]
    notice = notice_for(None, asking)
    assert notice is not None and notice.urgency == "critical"
    assert "Enter the code sent to your phone" in notice.body
    assert "qubes-miragevpn answer CODE" in notice.body and "300s" in notice.body
    hostile = notice_for(None, Asking(text="\x1b]0;x\x07Code", dynamic=False, timeout=300))
    assert hostile is not None and hostile.body.startswith("\\x1b]0;x\\x07Code. ")


def test_rate_limit_per_kind_and_in_total() -> None:
    limit = RateLimit(window=60, burst=3, same_kind=30)
    assert limit.allow(Kind.CONNECTED, 0)
    assert not limit.allow(Kind.CONNECTED, 10)  # same kind too soon
    assert limit.allow(Kind.DISCONNECTED, 11)
    assert limit.allow(Kind.CONNECTED, 31)
    assert not limit.allow(Kind.BLOCKED, 32)  # three in the last minute
    assert limit.allow(Kind.BLOCKED, 61)  # the first one left the window
    assert limit.suppressed == 2


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notify-send on PATH that records its arguments, one call a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    script = bin_dir / "notify-send"
    script.write_text(f'#!/bin/sh\nline=$(printf "%s|" "$@")\necho "$line" >> {calls}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    return calls


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root")
def test_notifier_runs_notify_send_as_the_default_user_rate_limited(stand_in: Path) -> None:
    async def scenario() -> None:
        clock = [0.0]
        notifier = Notifier(lambda: "root", clock=lambda: clock[0])
        notifier.phase_changed(Dialing(endpoint=ENDPOINT), UP)
        notifier.phase_changed(UP, Waiting(reason="server gone", retry_in=1))
        clock[0] = 5.0
        notifier.phase_changed(Waiting(reason="x"), UP)  # connected again within 30 s: journal
        notifier.phase_changed(None, Held(reason="AUTH_FAILED"))
        await notifier.drain()

    run(scenario())
    calls = stand_in.read_text().splitlines()  # in any order: the sends run side by side
    assert len(calls) == 3, calls
    titles = sorted(call.split("|")[4] for call in calls)
    assert titles == ["VPN connected", "VPN disconnected", "VPN login refused"], calls
    assert any(c.startswith("--app-name|qubes-miragevpn|--urgency|normal|VPN connected|")
               for c in calls)  # fmt: skip


def test_no_default_user_means_journal_only(
    stand_in: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        notifier = Notifier(lambda: None)
        notifier.phase_changed(UP, Waiting(reason="server gone"))
        await notifier.drain()

    with caplog.at_level("INFO", logger="qubes-miragevpn"):
        run(scenario())
    assert not stand_in.exists()
    assert "VPN disconnected: AppVMs are blocked until the tunnel is back (server gone)" in (
        caplog.text
    )


def test_the_daemon_reports_every_phase_change_once() -> None:
    seen: list[tuple[object, object]] = []
    h = Harness([[("connect", SERVER), ("up", settings()), end("AUTH_FAILED", AuthFailed("x"))]])
    h.daemon._on_phase = lambda old, new: seen.append((old, new))

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Held))
        h.daemon.stop()
        await task

    run(scenario())
    made = [notice_for(old, new) for old, new in seen]  # type: ignore[arg-type]
    assert [n.kind for n in made if n] == [Kind.CONNECTED, Kind.AUTH_FAILED]
    assert seen[0][0] is None and all(old != new for old, new in seen)


def test_a_failing_observer_does_not_stop_the_firewall() -> None:
    h = Harness([[("connect", SERVER), ("up", settings()), ("hold", None)]])

    def broken(old: object, new: object) -> None:
        raise RuntimeError("bug")

    h.daemon._on_phase = broken

    async def scenario() -> None:
        task = asyncio.ensure_future(h.daemon.run())
        await h.until(lambda: isinstance(h.daemon.phase, Up))
        h.daemon.stop()
        await task

    run(scenario())
    assert h.firewall.policies[-1] == "Blocked"
    assert notices.SAME_KIND > 0


def test_a_failing_notify_send_is_said_once_then_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither runuser nor notify-send
    notifier = Notifier(lambda: "root", limit=RateLimit(same_kind=0, burst=10))

    async def scenario() -> None:
        notifier.phase_changed(UP, Waiting(reason="a"))
        await notifier.drain()
        notifier.phase_changed(UP, Waiting(reason="b"))
        await notifier.drain()

    with caplog.at_level("DEBUG", logger="qubes-miragevpn"):
        run(scenario())
    failures = [r for r in caplog.records if "desktop notification not shown" in r.message]
    assert [r.levelname for r in failures] == ["WARNING", "DEBUG"], caplog.text
