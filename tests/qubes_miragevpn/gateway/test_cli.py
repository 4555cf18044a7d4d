"""`qubes-miragevpn`: the help teaches, exit codes are documented, the wiring maps the facts."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qubes_miragevpn.gateway import cli
from qubes_miragevpn.gateway.daemon import SOCKET_MARK, ExitCode, ProfileError
from qubes_miragevpn.gateway.facts import (
    PROFILE,
    FactsChanged,
    FactsError,
    FactsInvalid,
    FactsSourceLost,
    NetworkFacts,
    parse_facts,
)
from qubes_miragevpn.gateway.policy import QUBES_VIRTUAL_DNS
from tests.helpers.netns import Netns
from tests.helpers.pki import make_pki, write_pki

A = ipaddress.ip_address
COMMAND = (sys.executable, "-m", "qubes_miragevpn.gateway.cli")


def test_help_teaches_the_setup_and_lists_every_exit_code() -> None:
    text = cli.build_parser().format_help()
    for words in ("qvm-service sys-vpn qubes-miragevpn on", "vm-config.miragevpn-profile",
                  "/rw/config/qubes-miragevpn", "unblock", "inet qubes-miragevpn"):  # fmt: skip
        assert words in text
    for code in ExitCode:
        assert f"  {code.value:d}  " in text, code


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main([])
    assert raised.value.code == ExitCode.USAGE
    with pytest.raises(SystemExit) as raised:
        cli.main(["run", "--no-such-option"])
    assert raised.value.code == ExitCode.USAGE


def test_status_without_a_daemon_says_so_and_json_callers_still_get_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.CONTROL_DIR_ENV, str(tmp_path))  # what the qrexec service relies on
    assert cli.build_parser().parse_args(["status"]).control_dir == tmp_path
    assert cli.main(["status", "--json"]) == ExitCode.CONFIG
    out, err = capsys.readouterr()
    answer = json.loads(out)
    missing = f"the daemon is not running (no {tmp_path}/control.sock)"
    assert answer == {"ok": False, "error": missing}
    assert "not running" in err
    assert cli.main(["status"]) == ExitCode.CONFIG
    out, err = capsys.readouterr()
    assert out == "" and "not running" in err
    monkeypatch.delenv(cli.CONTROL_DIR_ENV)
    assert cli.build_parser().parse_args(["reconnect"]).control_dir == Path("/run/qubes-miragevpn")


def test_status_for_people_escapes_what_came_from_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {
        "state": "blocked",
        "why": "the profile cannot be used: \x1b]0;x\x07",
        "since": "2026-12-05T08:00:00Z",
        "seconds_in_state": 3,
        "one_time_code": {"text": "\x1b[2JCode", "seconds_left": 200},
    }
    answers = iter([{"ok": True, "status": status}, {"ok": False, "error": "bad \x1b[2J"}])
    monkeypatch.setattr(cli.control, "request", lambda message, directory: next(answers))
    assert cli.main(["status", "--control-dir", str(tmp_path)]) == ExitCode.OK
    out, _ = capsys.readouterr()
    assert "\x1b" not in out and "\\x1b]0;x\\x07" in out and "\\x1b[2JCode" in out, out
    assert out.startswith("state: blocked (") and out.count("\n") > 3
    assert cli.main(["reconnect", "--control-dir", str(tmp_path)]) == ExitCode.CONFIG
    _, err = capsys.readouterr()
    assert err == "qubes-miragevpn: the daemon refused: bad \\x1b[2J\n"


def test_the_console_script_is_installed() -> None:
    done = subprocess.run(
        [*COMMAND, "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert "--qubesdb-file" in done.stdout and "--config-dir" in done.stdout


def test_surroundings_from_qubesdb_facts() -> None:
    facts = parse_facts(
        {
            "/qubes-ip": "10.137.0.10",
            "/qubes-gateway": "10.137.0.5",
            "/qubes-gateway6": "fd09:24ef:4179::a89:5",
            "/qubes-primary-dns": "10.139.1.1",
            "/qubes-netvm-gateway": "10.138.0.1",
            "/qubes-netvm-primary-dns": "10.139.1.3",
            "/connected-ips": "10.137.0.21 10.137.0.22",
            "/connected-ips6": "fd09:24ef:4179::a89:15",
        }
    )
    s = cli.surroundings_of(facts)
    assert s.uplink_gateway == A("10.137.0.5")
    assert s.uplink_gateway6 == A("fd09:24ef:4179::a89:5")
    assert s.firewall.socket_mark == SOCKET_MARK
    assert s.firewall.uplink == "eth0"
    assert s.firewall.uplink_dns == (A("10.139.1.1"),)
    assert s.firewall.virtual_dns == (A("10.139.1.3"),)
    assert s.firewall.connected_ips == {
        A("10.137.0.21"),
        A("10.137.0.22"),
        A("fd09:24ef:4179::a89:15"),
    }


def test_surroundings_fall_back_to_qubes_defaults() -> None:
    s = cli.surroundings_of(parse_facts({}))
    assert s.firewall.virtual_dns == QUBES_VIRTUAL_DNS
    assert s.firewall.uplink_dns == QUBES_VIRTUAL_DNS
    assert s.firewall.connected_ips == frozenset()
    assert s.uplink_gateway is None


def test_profile_source_says_what_to_fix(tmp_path: Path) -> None:
    config_dir = tmp_path / "vpn"
    config_dir.mkdir()
    load = cli.profile_source(config_dir, lambda: None)
    with pytest.raises(ProfileError, match="no"):
        load()  # an empty folder
    (config_dir / "settings.yaml").write_text("dns: [not-an-address]\n")
    with pytest.raises(ProfileError, match=r"settings unusable: .*settings\.yaml:1"):
        load()


def test_profile_source_loads_the_selected_profile_with_settings_dns(tmp_path: Path) -> None:
    config_dir = tmp_path / "vpn"
    files = write_pki(make_pki(), config_dir)
    for name in ("a.ovpn", "b.ovpn"):
        path = config_dir / name
        path.write_text(
            f"client\ndev tun\nremote 192.0.2.{1 if name == 'a.ovpn' else 2} 1194\nca ca.crt\n"
            f"cert {files.client_cert.name}\nkey {files.client_key.name}\n"
        )
        os.chmod(path, 0o600)
    (config_dir / "settings.yaml").write_text("dns: [9.9.9.9]\n")
    selection: list[str | None] = [None]
    load = cli.profile_source(config_dir, lambda: selection[0])
    with pytest.raises(ProfileError, match="choose"):
        load()  # two profiles, none selected
    selection[0] = "b.ovpn"
    profile = load()
    assert profile.name == "b.ovpn"
    assert profile.config.remotes[0].host == "192.0.2.2"
    assert profile.dns == (A("9.9.9.9"),)


@pytest.mark.netns
def test_block_without_usable_facts_blocks_with_defaults_and_unblock_removes(
    netns: Netns, tmp_path: Path
) -> None:
    bad = tmp_path / "facts.yaml"
    bad.write_text("/qubes-ip: not-an-address\n")
    block = netns.run(
        [*COMMAND, "block", "--qubesdb-file", str(bad)],
        check=False,
    )
    assert block.returncode == ExitCode.OK, block.stderr
    assert "blocking with Qubes' defaults" in block.stderr
    assert f"{bad}:1" in block.stderr  # the facts' problem is said, with the line
    table = netns.run(["nft", "list", "table", "inet", "qubes-miragevpn"]).stdout
    assert "policy drop" in table
    unblock = netns.run([*COMMAND, "unblock"])
    assert unblock.returncode == ExitCode.OK
    assert netns.run(["nft", "list", "tables"]).stdout.strip() == ""


@pytest.mark.netns
def test_run_without_facts_exits_config_and_leaves_blocked(netns: Netns, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    done = netns.run(
        [*COMMAND, "run", "--qubesdb-file", str(missing), "--config-dir", str(tmp_path)],
        check=False,
    )
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "cannot read the network facts" in done.stderr
    assert netns.run(["nft", "list", "table", "inet", "qubes-miragevpn"]).returncode == 0


class FlakySource:
    """A facts source whose first stream fails after one update; the second keeps going."""

    def __init__(self, updates: list[list[object]]) -> None:
        self.streams = updates
        self.opened = 0

    def read(self) -> NetworkFacts:
        return parse_facts({})

    async def changes(self) -> AsyncIterator[object]:
        stream = self.streams[self.opened]
        self.opened += 1
        for update in stream:
            if isinstance(update, Exception):
                raise update
            yield update
        await asyncio.Event().wait()  # then nothing more, for ever


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def profile_changed(self) -> None:
        self.calls.append("profile")

    def facts_changed(self) -> None:
        self.calls.append("facts")


def test_follow_drives_the_daemon_and_survives_a_failing_stream() -> None:
    ips = parse_facts({"/connected-ips": "10.137.0.21"})
    switched = parse_facts({"/vm-config/miragevpn-profile": "b.ovpn"})
    source = FlakySource(
        [
            [FactsChanged(facts=ips, changed=frozenset({"/connected-ips"})), RuntimeError("bug")],
            [
                FactsInvalid(error=FactsError(()), changed=frozenset({"/connected-ips"})),
                FactsSourceLost(reason="QubesDB restarting"),
                FactsChanged(facts=switched, changed=frozenset({PROFILE})),
            ],
        ]
    )
    daemon = Recorder()
    current = {"facts": parse_facts({})}

    async def scenario() -> None:
        task = asyncio.ensure_future(cli.follow(source, daemon, current, retry=0.01))  # type: ignore[arg-type]
        for _ in range(500):
            if len(daemon.calls) >= 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert source.opened == 2  # followed again after the failure
    assert daemon.calls == ["facts", "profile", "facts"]  # invalid and lost change nothing
    assert current["facts"].profile == "b.ovpn"
