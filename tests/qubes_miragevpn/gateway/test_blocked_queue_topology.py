"""The NFQUEUE half of the blocked-traffic report with the real kernel queue and the real
`netfilterqueue` module, in the simulated Qubes topology: the reader names what an AppVM tried
and drops it; killed (SIGKILL) while AppVMs flood the queue, nothing leaves by the uplink and
the AppVMs stay blocked; with nobody reading, the queue drops everything (no `bypass`).

The kernel these tests were written on lacks nftables' own `queue` expression
(CONFIG_NFT_QUEUE), which the daemon's ruleset uses; it has the kernel's NFQUEUE core and the
xtables NFQUEUE target. So here the queueing rule is put in by `iptables-nft` (mangle FORWARD,
priority -150, before our forward chain at -10), with the same match and the same lack of
`--queue-bypass`: the kernel then queues to the same place, under the same no-listener rule
(`nf_queue` drops when no process is bound and the verdict has no bypass flag). The reader
runs as its own process, as the daemon would run it; `qubes-miragevpn block` puts our table
in force underneath, as at boot.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubes_miragevpn.gateway.policy import REPORT_QUEUE
from tests.helpers.gateway import facts_yaml
from tests.helpers.netns import stop_process, wait_until
from tests.helpers.qubes_topology import QubesTopology, qubes_topology

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(300)]

READER = """
import asyncio, ipaddress, json, sys
from qubes_miragevpn.gateway import blocked

names = {ipaddress.ip_address(sys.argv[2]): "work-vm"}
ledger = blocked.Ledger(names=lambda: names)

async def main() -> None:
    reader = blocked.QueueReader(int(sys.argv[1]), ledger)
    reader.start(asyncio.get_running_loop())
    while True:
        print(json.dumps({"seen": reader.seen, "entries": ledger.entries()}), flush=True)
        await asyncio.sleep(0.1)

asyncio.run(main())
"""


def missing() -> str | None:
    if shutil.which("iptables") is None:
        return "iptables (the stand-in for the nftables queue rule) is not installed"
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return "the netfilterqueue module is not installed (extra blocked-report)"
    return None


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QubesTopology]:
    if (why := missing()) is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("queue")
    with qubes_topology() as topo:
        facts = tmp / "qubesdb.yaml"
        facts.write_text(facts_yaml(topo, profile=None))
        done = topo.sysvpn.run(
            [sys.executable, "-m", "qubes_miragevpn.gateway.cli", "block", "--qubesdb-file",
             str(facts)], check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        for proto in ("tcp", "udp"):
            topo.sysvpn.run(
                ["iptables", "-t", "mangle", "-A", "FORWARD", "-i", "vif+", "-p", proto,
                 "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE",
                 "--queue-num", str(REPORT_QUEUE)],
            )  # fmt: skip
        yield topo


def start_reader(topo: QubesTopology, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = topo.sysvpn.spawn(
            [sys.executable, "-c", READER, str(REPORT_QUEUE), str(topo.appvms[0].ip4)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until(lambda: log.read_text().strip() != "", 15, interval=0.05, what="the reader")
    return proc


def last(log: Path) -> dict[str, Any]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_the_reader_names_the_flow_and_drops_it(topo: QubesTopology, tmp_path: Path) -> None:
    log = tmp_path / "reader.log"
    reader = start_reader(topo, log)
    try:
        with topo.capture() as cap:
            probe = topo.probe(topo.appvms[0].ns, topo.leak4, 443, timeout=0.5)
            other = topo.probe(topo.appvms[1].ns, topo.leak4, 53, proto="udp", timeout=0.5)
            wait_until(lambda: len(last(log)["entries"]) >= 2, 10, interval=0.1,
                       what="both flows in the reader's ledger")  # fmt: skip
        assert probe.outcome == "timeout" and other.outcome == "timeout"  # dropped, not refused
        assert cap.frames_from_sysvpn() == []
        entries = {e["destination"]["port"]: e for e in last(log)["entries"]}
        assert entries[443]["source"] == {"address": str(topo.appvms[0].ip4), "name": "work-vm"}
        assert entries[443]["destination"] == {"proto": "tcp", "address": str(topo.leak4),
                                               "port": 443}  # fmt: skip
        assert entries[53]["source"]["name"] is None
        assert "work-vm tried to reach 203.0.113.66:443 (tcp)" in log.read_text()
    finally:
        stop_process(reader)


def queued_now(topo: QubesTopology) -> int:
    """Packets waiting in our queue (/proc/net/netfilter/nfnetlink_queue, 3rd column)."""
    text = topo.sysvpn.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    for line in text.splitlines():
        fields = line.split()
        if fields and int(fields[0]) == REPORT_QUEUE:
            return int(fields[2])
    return 0


def test_sigkill_with_packets_queued_leaks_nothing(topo: QubesTopology, tmp_path: Path) -> None:
    log = tmp_path / "reader.log"
    reader = start_reader(topo, log)
    stop = threading.Event()
    outcomes: list[str] = []

    def flood(app: int) -> None:
        port = 30000 + 5000 * app
        while not stop.is_set():
            for proto in ("udp", "tcp"):
                probe = topo.probe(topo.appvms[app].ns, topo.leak4, port, proto=proto,
                                   timeout=0.05)  # fmt: skip
                outcomes.append(probe.outcome)
            port += 1

    threads = [threading.Thread(target=flood, args=(app,), daemon=True) for app in (0, 1)]
    try:
        with topo.capture() as cap:
            for thread in threads:
                thread.start()
            wait_until(lambda: last(log)["seen"] >= 20, 15, interval=0.05,
                       what="the reader to drop packets")  # fmt: skip
            reader.send_signal(signal.SIGSTOP)  # by PID: packets pile up in the queue
            wait_until(lambda: queued_now(topo) >= 5, 10, interval=0.05,
                       what="packets waiting in the queue")  # fmt: skip
            seen_in_queue = queued_now(topo)
            reader.kill()  # SIGKILL, by PID, with those packets queued
            reader.wait(10)
            time.sleep(2.0)  # the AppVMs keep sending, nobody reads the queue
            after = len(outcomes)
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(10)
        print(f"\n[queue] reader saw {last(log)['seen']} packets; {seen_in_queue} waiting "
              f"when it was SIGKILLed; {len(outcomes)} AppVM attempts in all")  # fmt: skip
        assert seen_in_queue >= 5
        assert len(outcomes) > after, "the AppVMs kept sending after the kill"
        assert "ok" not in outcomes
        assert cap.frames_from_sysvpn() == [], cap.frames_from_sysvpn()[:10]
        assert queued_now(topo) == 0  # no listener: nothing held, nothing passed on
    finally:
        stop.set()
        stop_process(reader)


def test_with_nobody_reading_the_queue_drops_everything(topo: QubesTopology) -> None:
    with topo.capture() as cap:
        probes = [
            topo.probe(topo.appvms[0].ns, topo.leak4, 443, timeout=0.3),
            topo.probe(topo.appvms[0].ns, topo.web4, 80, timeout=0.3),
            topo.probe(topo.appvms[1].ns, topo.leak4, 53, proto="udp", timeout=0.3),
        ]
    assert [p.outcome for p in probes] == ["timeout"] * 3
    assert cap.frames_from_sysvpn() == []
