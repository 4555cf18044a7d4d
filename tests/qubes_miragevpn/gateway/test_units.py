"""The Qubes integration files (qubes-miragevpn/): what the units and the hook promise."""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from qubes_miragevpn.gateway import notices

ROOT = Path(__file__).resolve().parents[3] / "qubes-miragevpn"
DAEMON = ROOT / "systemd" / "qubes-miragevpn.service"
BLOCK = ROOT / "systemd" / "qubes-miragevpn-block.service"
HOOK = ROOT / "post-install.d" / "30-qubes-miragevpn.sh"
SERVICE_FLAG = "/var/run/qubes-service/qubes-miragevpn"


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat in systemd)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(section: dict[str, list[str]], key: str) -> set[str]:
    return {w for value in section.get(key, []) for w in value.split()}


@pytest.mark.parametrize("path", [DAEMON, BLOCK])
def test_both_units_are_gated_on_the_qubes_service(path: Path) -> None:
    u = unit(path)
    conditions = u["Unit"]["ConditionPathExists"]
    assert SERVICE_FLAG in conditions
    assert "!/var/run/qubes/this-is-templatevm" in conditions


def test_block_runs_between_qubes_tables_and_forwarding() -> None:
    u = unit(BLOCK)
    assert u["Service"]["Type"] == ["oneshot"]
    assert u["Service"]["RemainAfterExit"] == ["yes"]
    assert u["Service"]["ExecStart"] == ["/usr/bin/qubes-miragevpn block"]
    assert "qubes-iptables.service" in words(u["Unit"], "After")
    assert "qubes-network.service" in words(u["Unit"], "Before")
    assert u["Unit"]["DefaultDependencies"] == ["no"]  # before basic.target's late units
    # a failed block keeps Qubes from switching forwarding on (fail closed)
    assert "qubes-network.service" in words(u["Install"], "RequiredBy")
    assert "ExecStop" not in u["Service"]  # stopping the unit never opens the firewall


def test_daemon_is_notify_watchdogged_restarted_and_hardened() -> None:
    u = unit(DAEMON)
    service = u["Service"]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["always"]
    assert service["ExecStart"] == ["/usr/bin/qubes-miragevpn run"]
    assert "WatchdogSec" in service
    assert words(service, "CapabilityBoundingSet") == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID",
    }  # fmt: skip
    assert words(service, "AmbientCapabilities") == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["ProtectSystem"] == ["strict"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert "ReadWritePaths" in service
    # the blocking oneshot comes first, and the daemon cannot start without it
    assert "qubes-miragevpn-block.service" in words(u["Unit"], "Requires")
    assert "qubes-miragevpn-block.service" in words(u["Unit"], "After")
    assert u["Unit"]["StartLimitIntervalSec"] == ["0"]  # restarted forever, never given up


def test_hook_advertises_the_service() -> None:
    text = HOOK.read_text()
    assert HOOK.stat().st_mode & 0o111, "the post-install hook must be executable"
    assert "qvm-features-request supported-service.qubes-miragevpn=1" in text
    assert subprocess.run(["sh", "-n", str(HOOK)], check=False).returncode == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("path", [DAEMON, BLOCK])
def test_systemd_accepts_the_unit(path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    # Our installed binary and our other unit do not exist here; anything else is an error
    # (an unknown key or a bad value is reported as "file:line: ...").
    problems = [
        line
        for line in done.stderr.splitlines()
        if line.strip()
        and "Command /usr/bin/qubes-miragevpn is not executable" not in line
        and "Unit qubes-miragevpn-block.service not found" not in line
    ]
    assert problems == [], done.stderr


def run_with_bounding_set(
    caps: set[str], argv: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`argv` as root whose capabilities are only `caps`, as systemd runs a unit with
    CapabilityBoundingSet=caps and NoNewPrivileges=yes."""
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps))])
    setpriv = ["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs"]
    return subprocess.run(
        [*setpriv, *argv], capture_output=True, text=True, env=env, timeout=30, check=False
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="root drops to another user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_the_daemons_capabilities_let_a_notice_reach_the_default_users_desktop() -> None:
    """The daemon runs `runuser -u USER -- notify-send` (notices.py); with the unit's bounding
    set it really becomes USER (`nobody` here; a stand-in notify-send prints its uid), and
    without SETUID/SETGID it could not: the check can fail."""
    caps = words(unit(DAEMON)["Service"], "CapabilityBoundingSet")
    notice = notices.Notice(kind=notices.Kind.CONNECTED, title="VPN connected", body="x")
    argv = notices.notify_send_argv("nobody", notice)
    bin_dir = Path(tempfile.mkdtemp(prefix="qmvpn-notify-", dir="/tmp"))
    try:
        bin_dir.chmod(0o755)  # `nobody` must reach the stand-in
        stand_in = bin_dir / "notify-send"
        stand_in.write_text('#!/bin/sh\necho "uid=$(id -u) gid=$(id -g) $*"\n')
        stand_in.chmod(0o755)
        env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
        nobody = pwd.getpwnam("nobody")
        shown = run_with_bounding_set(caps, argv, env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"uid={nobody.pw_uid} gid={nobody.pw_gid} "), shown.stdout
        assert "VPN connected" in shown.stdout
        network_only = run_with_bounding_set(caps - {"CAP_SETUID", "CAP_SETGID"}, argv, env)
        assert network_only.returncode != 0 and "uid=" not in network_only.stdout
    finally:
        shutil.rmtree(bin_dir)
