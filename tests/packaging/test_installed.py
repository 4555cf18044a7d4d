"""The .deb installed on this machine with apt, proven by the leak tests, then purged clean.

apt installs the package and its dependencies from Debian's own archive (never pip); the
gateway then runs as a user's qube would run it: /usr/bin/qubes-miragevpn on the system
python3 and the system's libraries, out of /usr/lib/python3/dist-packages. A subset of the
simulated-Qubes leak tests (tests/helpers/gateway.py) runs against that installed program:
the boot-time block, READY while blocked, connected AppVMs using only the tunnel and the VPN's
DNS, a server restart, a SIGKILL of the daemon, and the stop that leaves everything blocked.
Then `apt-get purge`, run inside the simulated sys-vpn, must take the firewall table the daemon
left there with it, and the machine must be as before: no program, no modules, no unit files,
no enablement links, no tables.

This changes the machine while it runs (one lock file keeps two runs apart); the package is
purged in a `finally`, whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.gateway import (
    RECOVERY_LIMIT,
    UDP,
    World,
    assert_no_leaks,
    built_world,
    busy,
    probe_everything,
    start_server,
)
from tests.helpers.netns import wait_until
from tests.packaging.build import DEB, pytestmark_system_only, run

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.netns,
    pytestmark_system_only,
    pytest.mark.timeout(900),
]

PACKAGE = "qubes-miragevpn"
PROGRAM = Path("/usr/bin/qubes-miragevpn")
QREXEC_SERVICE = Path("/etc/qubes-rpc/qubes.MirageVPNStatus")
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
LOCK = Path("/run/lock/qubes-miragevpn-packaging.lock")
LOCK_WAIT = 900.0
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
# every path the package puts on the machine that is not a Python module
INSTALLED_PATHS = (
    PROGRAM,
    Path("/usr/bin/miragevpn-client"),
    Path("/lib/systemd/system/qubes-miragevpn.service"),
    Path("/lib/systemd/system/qubes-miragevpn-block.service"),
    Path("/lib/systemd/system-preset/75-qubes-miragevpn.preset"),
    Path("/etc/qubes/post-install.d/30-qubes-miragevpn.sh"),
    QREXEC_SERVICE,
    DIST_PACKAGES / "qubes_miragevpn",
    DIST_PACKAGES / "miragevpn",
    Path("/usr/share/doc/qubes-miragevpn"),
)
# what deb-systemd-helper enable makes of the units' [Install] sections
ENABLED_LINKS = (
    Path("/etc/systemd/system/multi-user.target.wants/qubes-miragevpn.service"),
    Path("/etc/systemd/system/multi-user.target.wants/qubes-miragevpn-block.service"),
    Path("/etc/systemd/system/qubes-network.service.requires/qubes-miragevpn-block.service"),
)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One packaging run at a time on this machine (bounded wait)."""
    with LOCK.open("w") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another packaging run holds {LOCK}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def installed_version() -> str | None:
    done = run(["dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE])
    if done.returncode != 0 or not done.stdout.startswith("install ok installed"):
        return None
    return done.stdout.split()[-1]


def purge(netns: str | None = None) -> None:
    """`apt-get purge` (inside network namespace `netns`, so that the package's scripts meet
    the table left there); a no-op when the package is not installed."""
    if run(["dpkg-query", "-W", PACKAGE]).returncode != 0:
        return
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = run([*prefix, *APT, "purge", PACKAGE], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[None]:
    with machine_lock():
        purge()  # a leftover of an interrupted run
        started = time.monotonic()
        done = run([*APT, "install", "--no-install-recommends", str(deb)], timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        print(f"\n[packaging] apt-get install {deb.name}: {time.monotonic() - started:.1f} s")
        try:
            yield
        finally:
            purge()


@pytest.fixture(scope="module")
def world(installed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The simulated Qubes network of the topology tests, with the gateway being the installed
    program and an environment that names no virtual environment or source tree."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    with pytest.MonkeyPatch.context() as mp:
        for key in set(os.environ) - set(clean):
            mp.delenv(key)
        profiles = {"udp.ovpn": (UDP, ())}
        with built_world(tmp_path_factory.mktemp("installed"), profiles) as world:
            # the installed console script instead of `python -m` from this tree
            world.qubes_miragevpn = lambda *args: [str(PROGRAM), *args]  # type: ignore[method-assign]
            yield world


def test_apt_installed_the_program_its_units_and_enabled_them(installed: None) -> None:
    assert installed_version() == (DEB.name.split("_")[1])
    missing = [str(p) for p in INSTALLED_PATHS if not p.exists()]
    assert missing == []
    links = {str(p): os.readlink(p) if p.is_symlink() else None for p in ENABLED_LINKS}
    assert all(target and target.startswith("/lib/systemd/system/") for target in links.values()), (
        links
    )
    # the dependencies came from Debian's packages, not from pip
    for package in ("python3-cryptography", "python3-openssl",
                    "python3-yaml", "python3-nftables", "nftables"):  # fmt: skip
        status = run(["dpkg-query", "-W", "-f=${Status}", package]).stdout
        assert status == "install ok installed", (package, status)


def test_the_installed_program_runs_on_the_system_python_and_libraries(installed: None) -> None:
    assert PROGRAM.read_text().startswith("#!/usr/bin/python3\n")
    done = run([str(PROGRAM), "--help"])
    assert done.returncode == 0, done.stderr
    assert "block" in done.stdout and "unblock" in done.stdout
    # -I: no PYTHONPATH, no user site, no current folder; what a systemd unit gets
    where = run(["/usr/bin/python3", "-I", "-c",
                 "import qubes_miragevpn.gateway.cli, miragevpn, cryptography, OpenSSL, "
                 "yaml, nftables\n"
                 "for m in (qubes_miragevpn, miragevpn, cryptography, OpenSSL, yaml, "
                 "nftables): print(m.__file__)"], cwd=Path("/"))  # fmt: skip
    assert where.returncode == 0, where.stderr
    paths = where.stdout.split()
    assert len(paths) == 6 and all(p.startswith(f"{DIST_PACKAGES}/") for p in paths), paths


# ---------------------------------------------------------------- the leak tests, installed


def test_installed_block_at_boot_refuses_appvms_and_nothing_leaves(world: World) -> None:
    done = world.topo.sysvpn.run(
        world.qubes_miragevpn("block", "--qubesdb-file", str(world.facts_path)), check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with world.topo.capture() as cap:
        probe = world.topo.probe(world.topo.appvms[0].ns, world.topo.web4, 80)
        probe_everything(world)
    assert probe.outcome != "ok" and probe.failed_fast, probe
    assert cap.frames_from_sysvpn() == []
    assert world.web.seen == []


def test_installed_daemon_ready_while_blocked_then_connects(world: World) -> None:
    with world.topo.capture() as cap:
        started = world.start_daemon()
        wait_until(lambda: world.notify.first("READY=1", started), 20, what="READY=1")
        assert world.daemon is not None
        cmdline = Path(f"/proc/{world.daemon.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [b"/usr/bin/python3", str(PROGRAM).encode()], cmdline
        time.sleep(1.0)
        assert world.fetch() is None
        probe_everything(world)
    assert_no_leaks(world, cap, "installed daemon ready, server down")
    start_server(world, "udp", UDP)
    world.wait_through_tunnel(time.monotonic(), "installed: first connect")


def test_installed_connected_appvms_use_the_tunnel_and_the_vpns_dns_only(world: World) -> None:
    topo = world.topo
    seen_before = len(world.web.seen)
    with topo.capture() as cap:
        for app in topo.appvms:
            probe = topo.probe(app.ns, topo.web4, 80)
            assert probe.outcome == "ok" and probe.reply == b"web", probe
            dns = topo.probe(app.ns, topo.virtual_dns[0], 53, proto="udp")
            assert dns.outcome == "ok" and dns.reply == b"vpn-dns", dns
    new = world.web.seen[seen_before:]
    assert new and all(a.startswith("10.8.0.") for a in new), new
    assert all(r.seen == [] for r in world.uplink_dns), "AppVM DNS reached the uplink resolver"
    assert_no_leaks(world, cap, "installed: connected")


def qrexec_status(world: World) -> subprocess.CompletedProcess[str]:
    """Call the installed qrexec service as qrexec-agent would for dom0's
    `qvm-run --pass-io --service sys-vpn qubes.MirageVPNStatus`: no arguments, the caller's
    bytes on stdin, QREXEC_REMOTE_DOMAIN set; the test's daemon socket named by the variable."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "QREXEC_REMOTE_DOMAIN": "dom0",
        "QREXEC_SERVICE_FULL_NAME": QREXEC_SERVICE.name,
        "QUBES_MIRAGEVPN_CONTROL_DIR": str(world.control_dir),
    }
    return subprocess.run(
        [str(QREXEC_SERVICE)],
        input="anything the caller sends is ignored\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_installed_qrexec_status_service_answers_the_status_json(world: World) -> None:
    assert os.access(QREXEC_SERVICE, os.X_OK), "the qrexec service must be executable"
    done = qrexec_status(world)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["version"] == 1
    assert status["state"] == "connected", status
    assert status["profile"] == "udp.ovpn", status
    # the same answer `qubes-miragevpn status --json` gives
    direct = json.loads(world.control("status", "--json").stdout)
    assert direct["state"] == status["state"] and direct["profile"] == status["profile"]


def test_installed_server_restart_and_sigkill_recover_without_leaks(world: World) -> None:
    server = world.servers["udp"]
    with world.topo.capture() as cap, busy(world) as outcomes:
        server.stop()
        time.sleep(2.0)
        assert world.fetch() is None
        probe_everything(world)
        server.spawn()
        server.wait_ready()
        assert (
            world.wait_through_tunnel(time.monotonic(), "installed: server back") < RECOVERY_LIMIT
        )
        world.kill_daemon()
        time.sleep(0.5)
        assert world.fetch() is None  # the table outlived the daemon
        probe_everything(world)
        restarted = world.start_daemon()
        assert world.wait_through_tunnel(restarted, "installed: after SIGKILL") < RECOVERY_LIMIT
    assert_no_leaks(world, cap, "installed: server restart, SIGKILL")
    assert "ok" in outcomes


def test_installed_stop_leaves_blocked_and_purge_leaves_the_machine_clean(world: World) -> None:
    assert world.stop_daemon() == 0
    asked = qrexec_status(world)  # dom0 asking a stopped gateway still gets one JSON object
    assert asked.returncode == 1
    assert json.loads(asked.stdout) == {
        "ok": False,
        "error": f"the daemon is not running (no {world.control_dir}/control.sock)",
    }
    with world.topo.capture() as cap:
        assert world.fetch() is None
        probe_everything(world)
    assert cap.frames_from_sysvpn() == []
    table = ["nft", "list", "table", "inet", "qubes-miragevpn"]
    assert world.topo.sysvpn.run(table, check=False).returncode == 0, "blocked after stop"

    purge(netns=world.topo.sysvpn.name)

    assert installed_version() is None
    assert run(["dpkg-query", "-W", PACKAGE]).returncode != 0, "purged: dpkg forgets it"
    assert world.topo.sysvpn.run(table, check=False).returncode != 0, "purge took the table"
    assert run(table).returncode != 0  # and none on the machine itself
    left = [str(p) for p in (*INSTALLED_PATHS, *ENABLED_LINKS) if p.exists() or p.is_symlink()]
    assert left == []
    units = run(
        [
            "sh",
            "-c",
            "ls /etc/systemd/system /etc/systemd/system/*.wants "
            "/etc/systemd/system/*.requires 2>/dev/null | grep -c qubes-miragevpn",
        ]
    )
    assert units.stdout.strip() == "0", units.stdout
    assert not PROGRAM.exists()
