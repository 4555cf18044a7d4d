"""Gateway benchmark (a script, not a test): our Qubes VPN gateway vs the `openvpn` client with
an nftables kill switch, in the same simulated Qubes network, side by side.

    .venv/bin/python bench/gateway.py [--rounds 2] [--seconds 10] [--quick]
                                      [--output bench/results/gateway.json]
                                      [--png bench/results/gateway-timeline.png]

The world is tests/helpers/gateway.py's: sys-net (the "internet", and a real OpenVPN 2.6
server on 198.51.100.1, UDP, tls-crypt, AES-256-GCM, keepalive 1 5), sys-vpn with Qubes' own
tables, two AppVMs behind it. Each turn builds a fresh world and runs ONE gateway in sys-vpn:

- "ours": `qubes-miragevpn block` (the boot oneshot), then `qubes-miragevpn run`;
- "openvpn": the kill switch of bench/killswitch.py, then `openvpn --config client.conf`
  (the same profile text, plus `disable-dco`).

Turns alternate (round 1: openvpn, ours; round 2: ours, openvpn; ...); the table shows the
median over rounds. In each turn, while appvm1 sends a steady stream of small UDP datagrams to
a host behind the VPN (bench/gwtraffic.py: 200/s, each arrival's source address tells whether
it came through the tunnel) and tcpdump watches sys-vpn's uplink:

1. start: the gateway is started; time to the AppVM's first datagram through the tunnel;
2. server return: the server is stopped for a few seconds, then started; recovery is counted
   from the moment the server is ready again;
3. SIGKILL: the gateway process is killed and started again after its own systemd unit's
   RestartSec, as systemd would: ours from qubes-miragevpn/systemd/qubes-miragevpn.service
   (500ms), openvpn's from Debian's openvpn@.service (5s; the package's other client unit,
   openvpn-client@.service, has no Restart= and would not come back at all). Counted from the
   kill ("recovery: SIGKILL"); the time from the restart itself is shown beside it without a
   target ("restart -> first packet": the process's own start-up, the same for both units);
4. uplink flap: sys-vpn's uplink goes down for a few seconds, then up (and Qubes' setup-ip
   puts back its neighbour and routes); counted from the link coming up.

Frames on the uplink that are not the encrypted session to the server are leaks (should be
none, for either gateway). Then, with the fault phase over: TCP throughput AppVM -> host and
host -> AppVM (iperf3, -R), small-packet rate both ways (iperf3 -u -b 0 -l 64, packets/s
received), and the gateway process's peak RSS (VmHWM, the highest of its lives in the turn).
Each iperf3 run must show up in the VPN server's tun counters (at least 95% of what iperf3
counted), or it is reported as an error instead of a number: a run that bypassed the tunnel
would measure nothing.

It prints a table (metric | openvpn gateway | ours | ratio | target), writes the numbers as
JSON and draws the timeline (bench/timeline.py, matplotlib) of the first turn of each gateway.
Speed targets live here, never in the tests. Everything stays inside the namespaces made
here; every wait is bounded; processes are stopped by PID and namespaces deleted on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchlib import (  # noqa: E402
    CpuMeter,
    Metric,
    ProcStats,
    comparison_table,
    iperf3,
    median_metrics,
    tcp_mbits,
)
from bench.compare import log, versions  # noqa: E402
from bench.gwtraffic import Stamped, Stream, UplinkCapture  # noqa: E402
from tests.helpers.gateway import UDP, World, built_world, start_server  # noqa: E402
from tests.helpers.openvpn import TUNNEL_NETWORK, OpenVpnProcess, client_config  # noqa: E402
from tests.helpers.qubes_topology import BACKEND_MAC, SYSVPN_MAC  # noqa: E402

from bench import killswitch  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CONTENDERS = ("openvpn", "ours")
LABELS = {"openvpn": "openvpn gateway", "ours": "ours"}
RSS_LIMIT_MB = 40.0
RECOVERY_TIMEOUT = 45.0  # seconds to wait for the first datagram through the tunnel
OUR_UNIT = ROOT / "qubes-miragevpn" / "systemd" / "qubes-miragevpn.service"
OPENVPN_UNIT = Path("/lib/systemd/system/openvpn@.service")  # Debian's restarting client unit
SERVER_TUN = "tun0"  # the OpenVPN server's device in sys-net (the only tun there)
STREAM_RATE = 200.0  # datagrams/s: 5 ms resolution for every recovery time


METRICS = (
    Metric("tcp_up_mbits", "TCP AppVM->host (Mbit/s)", "{:.0f}", "higher", ">= 1.0x"),
    Metric("tcp_down_mbits", "TCP host->AppVM (Mbit/s)", "{:.0f}", "higher", ">= 1.0x"),
    Metric("udp_up_pps", "64 B UDP AppVM->host (rx pkt/s)", "{:.0f}", "higher", ">= 1.0x"),
    Metric("udp_down_pps", "64 B UDP host->AppVM (rx pkt/s)", "{:.0f}", "higher", ">= 1.0x"),
    Metric("start_s", "start -> first AppVM packet (s)", "{:.2f}", "lower"),
    Metric("server_return_s", "recovery: server back (s)", "{:.2f}", "lower", "no slower"),
    Metric("sigkill_s", "recovery: SIGKILL, unit restart (s)", "{:.2f}", "lower", "no slower"),
    Metric("restart_s", "restart -> first packet (s)", "{:.2f}", "lower"),
    Metric("flap_s", "recovery: uplink flap (s)", "{:.2f}", "lower", "no slower"),
    Metric("leaks", "uplink frames outside session", "{:.0f}", "lower", "0"),
    Metric("rss_mb", "peak RSS, VmHWM (MB)", "{:.1f}", "lower", f"< {RSS_LIMIT_MB:g} MB"),
    Metric("cpu_tcp_up", "gateway CPU % during TCP up", "{:.0f}", None),
    Metric("cpu_udp_up", "gateway CPU % during UDP up", "{:.0f}", None),
)

SMALL = 64  # bytes of UDP payload in the packet-rate runs
# name, iperf3 arguments (after -c ADDRESS -t N -J); the UDP runs get -l 64
TRAFFIC = (
    ("tcp_up", ()),
    ("tcp_down", ("-R",)),
    ("udp_up", ("-u", "-b", "0", "-l", str(SMALL))),
    ("udp_down", ("-u", "-b", "0", "-l", str(SMALL), "-R")),
)


@dataclass(frozen=True)
class Timing:
    """How long each fault phase lasts."""

    steady: float = 4.0  # seconds of normal traffic between faults
    server_down: float = 4.0
    flap_down: float = 3.0


# --------------------------------------------------------------------------- the two gateways


def restart_sec(unit_text: str, *, unit: str) -> float:
    """The delay systemd waits before restarting a unit, from its text (systemd.service(5):
    RestartSec=, a time span like "500ms", "5s" or "5"; default 100ms). ValueError when the
    unit does not restart after a crash (no Restart=, or Restart=no)."""
    restart, delay = "no", 0.1
    for raw in unit_text.splitlines():
        key, _, value = raw.strip().partition("=")
        if key == "Restart":
            restart = value.strip()
        elif key == "RestartSec":
            delay = time_span(value.strip())
    # systemd.service(5): an uncaught signal (SIGKILL) restarts always, on-failure, on-abnormal
    # and on-abort; only these stay dead
    if restart in ("no", "on-success", "on-watchdog", ""):
        raise ValueError(f"{unit} is not restarted after SIGKILL (Restart={restart})")
    return delay


def time_span(text: str) -> float:
    """Seconds of a systemd time span: "500ms", "5s", "1min 30s", "5" (seconds)."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}
    if not text.split():
        raise ValueError(f"not a systemd time span: {text!r}")
    total = 0.0
    for part in text.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        suffix = part[len(number) :] or "s"
        if not number or suffix not in units:
            raise ValueError(f"not a systemd time span: {text!r}")
        total += float(number) * units[suffix]
    return total


class Gateway:
    """One gateway in sys-vpn: prepare (firewall), start, kill (SIGKILL), peak RSS."""

    unit = OUR_UNIT  # the systemd unit that would run it: its RestartSec applies after SIGKILL

    def __init__(self, world: World, workdir: Path) -> None:
        self.world, self.workdir = world, workdir
        self.hwm_kib = 0

    def restart_delay(self) -> float:
        return restart_sec(self.unit.read_text(), unit=str(self.unit))

    def prepare(self) -> None:
        raise NotImplementedError

    def spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def process(self) -> subprocess.Popen[bytes] | None:
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError

    def start(self) -> float:
        started = time.monotonic()
        self.spawn()
        return started

    def note_hwm(self) -> None:
        proc = self.process()
        if proc is not None and proc.poll() is None:
            self.hwm_kib = max(self.hwm_kib, ProcStats(proc.pid).status_kib("VmHWM") or 0)

    def kill(self) -> None:
        proc = self.process()
        assert proc is not None
        self.note_hwm()
        proc.kill()
        proc.wait(10)


class Ours(Gateway):
    def prepare(self) -> None:
        argv = self.world.qubes_miragevpn("block", "--qubesdb-file", str(self.world.facts_path))
        done = self.world.topo.sysvpn.run(argv, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"qubes-miragevpn block: {done.stdout}{done.stderr}")

    def spawn(self) -> subprocess.Popen[bytes]:
        self.world.start_daemon()
        assert self.world.daemon is not None
        return self.world.daemon

    def process(self) -> subprocess.Popen[bytes] | None:
        return self.world.daemon

    def kill(self) -> None:
        super().kill()
        self.world.daemon = None

    def log_text(self) -> str:
        """Every life of the daemon in this turn, in order."""
        lives = sorted(self.world.tmp.glob("daemon-*.log"), key=lambda p: int(p.stem[7:]))
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in lives)


class OpenVpnGateway(Gateway):
    unit = OPENVPN_UNIT

    def __init__(self, world: World, workdir: Path) -> None:
        super().__init__(world, workdir)
        config = workdir / "openvpn-client.conf"
        config.write_text(client_config(UDP, world.files, world.topo.server4, real=True))
        self.openvpn = OpenVpnProcess(world.topo.sysvpn, config, workdir / "openvpn-client.log")

    def prepare(self) -> None:
        topo = self.world.topo
        document = killswitch.build_document(
            server=topo.server4, port=UDP.port, proto=UDP.transport, uplink=topo.uplink
        )
        topo.sysvpn.run(["nft", "-j", "-f", "-"], input=killswitch.as_text(document))

    def spawn(self) -> subprocess.Popen[bytes]:
        self.openvpn.spawn()
        assert self.openvpn.proc is not None
        return self.openvpn.proc

    def process(self) -> subprocess.Popen[bytes] | None:
        return self.openvpn.proc

    def log_text(self) -> str:
        return self.openvpn.log_text()

    def stop(self) -> None:
        self.openvpn.stop()


def make_gateway(name: str, world: World, workdir: Path) -> Gateway:
    return Ours(world, workdir) if name == "ours" else OpenVpnGateway(world, workdir)


# --------------------------------------------------------------------------- one turn


@dataclass
class Turn:
    """What one gateway did in one world: numbers, and the timeline's raw material."""

    name: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    origin: float = 0.0  # monotonic time of the timeline's 0
    events: list[tuple[float, str]] = field(default_factory=list)  # (seconds, what)
    blocked: list[tuple[float, float | None, str]] = field(default_factory=list)
    tunnel_arrivals: list[float] = field(default_factory=list)  # seconds
    leaks: list[tuple[float, str]] = field(default_factory=list)  # (seconds, frame)
    errors: dict[str, str] = field(default_factory=dict)

    def timeline(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "blocked": self.blocked,
            "tunnel_arrivals": self.tunnel_arrivals,
            "leaks": self.leaks,
        }


def uplink_leaks(world: World, frames: list[Stamped]) -> list[Stamped]:
    """Frames sys-vpn sent to sys-net that are not the encrypted session (ARP aside)."""
    session = (str(world.topo.server4), 17, UDP.port)
    return [
        s
        for s in frames
        if s.frame.src_mac == SYSVPN_MAC
        and s.frame.ethertype != 0x0806
        and not (
            s.frame.src == str(world.topo.sysvpn4)
            and (s.frame.dst, s.frame.proto, s.frame.dport) == session
        )
    ]


def flap_uplink(world: World, seconds: float) -> float:
    """Uplink down for `seconds`, then up with Qubes' setup-ip state back; returns the moment
    the link came up."""
    topo, vpn = world.topo, world.topo.sysvpn
    vpn.run(["ip", "link", "set", topo.uplink, "down"])
    time.sleep(seconds)
    vpn.run(["ip", "link", "set", topo.uplink, "up"])
    back = time.monotonic()
    vpn.run(["ip", "neigh", "replace", str(topo.gateway4), "lladdr", BACKEND_MAC,
             "dev", topo.uplink, "nud", "permanent"])  # fmt: skip
    vpn.run(["ip", "route", "replace", str(topo.gateway4), "dev", topo.uplink, "scope", "link"])
    vpn.run(["ip", "route", "replace", "default", "via", str(topo.gateway4), "dev",
             topo.uplink, "onlink"])  # fmt: skip
    return back


def fault_phase(turn: Turn, world: World, gateway: Gateway, stream: Stream, timing: Timing) -> None:
    server = world.servers["udp"]

    def at(t: float) -> float:
        return t - turn.origin

    def recover(key: str, since: float, blocked_from: float, what: str) -> None:
        delay = stream.wait_through_tunnel(since, RECOVERY_TIMEOUT)
        turn.metrics[key] = delay
        end = None if delay is None else at(since + delay)
        turn.blocked.append((at(blocked_from), end, what))
        log(f"{turn.name}: {what}: " + ("no recovery" if delay is None else f"{delay:.3f} s"))
        if delay is None:
            turn.errors[key] = f"nothing through the tunnel {RECOVERY_TIMEOUT:g} s after {what}"

    started = gateway.start()
    turn.events.append((at(started), "start"))
    recover("start_s", started, started, "start")
    gateway.note_hwm()
    time.sleep(timing.steady)

    down = time.monotonic()
    server.stop()
    turn.events.append((at(down), "server down"))
    time.sleep(timing.server_down)
    server.spawn()
    server.wait_ready()
    back = time.monotonic()
    turn.events.append((at(back), "server back"))
    recover("server_return_s", back, down, "server back")
    time.sleep(timing.steady)

    delay = gateway.restart_delay()
    killed = time.monotonic()
    gateway.kill()
    turn.events.append((at(killed), "SIGKILL"))
    time.sleep(delay)
    restarted = time.monotonic()
    gateway.spawn()
    turn.events.append((at(restarted), f"restart (+{delay:g} s)"))
    recover("sigkill_s", killed, killed, "SIGKILL")
    if turn.metrics["sigkill_s"] is not None:
        turn.metrics["restart_s"] = turn.metrics["sigkill_s"] - (restarted - killed)
    time.sleep(timing.steady)

    flapped = time.monotonic()
    turn.events.append((at(flapped), "uplink down"))
    up = flap_uplink(world, timing.flap_down)
    turn.events.append((at(up), "uplink up"))
    recover("flap_s", up, flapped, "uplink up")
    time.sleep(timing.steady)


def server_tun(world: World) -> dict[str, int]:
    """Packets and bytes the VPN server's tun device received (`rx`) and sent (`tx`) so far."""
    links = world.topo.sysnet.json(["ip", "-j", "-s", "link", "show", "dev", SERVER_TUN])
    stats = links[0]["stats64"]
    return {f"{way}_{unit}": int(stats[way][unit]) for way in ("rx", "tx")
            for unit in ("bytes", "packets")}  # fmt: skip


def udp_received(report: dict[str, Any]) -> tuple[float, float]:
    """(datagrams/s the receiving iperf3 read, datagrams/s the sender wrote) of a UDP run.

    Received is the receiver's byte count over the payload size: `packets - lost_packets`
    would count as received the datagrams dropped after the last one that arrived (lost from
    the queues when the run stops), which a short run at -b 0 overstates by thousands."""
    received, sent = report["end"]["sum_received"], report["end"]["sum_sent"]
    seconds = float(received["seconds"]) or 1.0
    return int(received["bytes"]) / SMALL / seconds, int(sent["packets"]) / seconds


def through_server_tun(test: str, report: dict[str, Any], moved: dict[str, int]) -> str | None:
    """None if the VPN server's tun carried at least what iperf3 counted (the run went through
    the tunnel), else what is missing."""
    way = "rx" if test.endswith("_up") else "tx"
    if test.startswith("tcp"):
        counted, unit = int(report["end"]["sum_received"]["bytes"]), "bytes"
    else:
        counted = int(report["end"]["sum_received"]["bytes"]) // SMALL
        unit = "packets"
    if moved[f"{way}_{unit}"] >= 0.95 * counted:
        return None
    return f"the server's tun {way} moved {moved[f'{way}_{unit}']} {unit}, iperf3 counted {counted}"


def traffic_phase(turn: Turn, world: World, gateway: Gateway, seconds: float) -> None:
    topo = world.topo
    proc = gateway.process()
    if proc is None or proc.poll() is not None:
        turn.errors["traffic"] = "the gateway is not running"
        return
    stats = ProcStats(proc.pid)
    server = world.servers["udp"].proc
    server_stats = ProcStats(server.pid if server is not None else 0)
    for test, args in TRAFFIC:
        time.sleep(1.0)  # let queues drain between runs
        try:
            before = server_tun(world)
            with CpuMeter(stats, server_stats) as cpu:
                report = iperf3(topo.sysnet, topo.appvms[0].ns, str(topo.web4), seconds, args)
            after = server_tun(world)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
            turn.errors[test] = str(e)
            log(f"{turn.name}: {test} failed: {e}")
            continue
        missing = through_server_tun(test, report, {k: after[k] - before[k] for k in after})
        if missing is not None:  # not through the tunnel: the number would mean nothing
            turn.errors[test] = missing
            log(f"{turn.name}: {test}: {missing}")
            continue
        turn.metrics[f"cpu_{test}"] = cpu.percent[0]
        turn.metrics[f"server_cpu_{test}"] = cpu.percent[1]
        if test.startswith("tcp"):
            mbits, retrans = tcp_mbits(report)
            turn.metrics[f"{test}_mbits"], turn.metrics[f"{test}_retrans"] = mbits, retrans
            log(f"{turn.name}: {test} {mbits:.0f} Mbit/s ({retrans} retransmits), "
                f"gateway CPU {cpu.percent[0]:.0f}%")  # fmt: skip
        else:
            received, offered = udp_received(report)
            turn.metrics[f"{test}_pps"], turn.metrics[f"{test}_offered"] = received, offered
            log(f"{turn.name}: {test} {received:.0f} pkt/s received "
                f"({offered:.0f} offered), gateway CPU {cpu.percent[0]:.0f}%")  # fmt: skip


def run_turn(name: str, workdir: Path, args: argparse.Namespace) -> Turn:
    turn = Turn(name)
    workdir.mkdir(parents=True)
    with built_world(workdir, {"udp.ovpn": (UDP, ())}) as world:
        start_server(world, "udp", UDP)
        gateway = make_gateway(name, world, workdir)
        gateway.prepare()
        topo = world.topo
        stream = Stream(topo.appvms[0].ns, topo.sysnet, str(topo.web4), TUNNEL_NETWORK,
                        rate=STREAM_RATE)  # fmt: skip
        capture = UplinkCapture(topo.sysnet, topo.sysnet_vif, str(topo.sysvpn4))
        stream.start()
        turn.origin = time.monotonic()
        try:
            fault_phase(turn, world, gateway, stream, args.timing)
        finally:
            frames = capture.stop()
            stream.stop()
            (workdir.parent / f"{workdir.name}-gateway.log").write_text(gateway.log_text())
        leaks = uplink_leaks(world, frames)
        turn.metrics["leaks"] = float(len(leaks) + stream.outside_tunnel())
        turn.leaks = [(s.when - turn.origin, str(s.frame)) for s in leaks]
        turn.tunnel_arrivals = [t - turn.origin for t, via, _ in stream.arrivals if via]
        traffic_phase(turn, world, gateway, args.seconds)
        gateway.note_hwm()
        turn.metrics["rss_mb"] = gateway.hwm_kib / 1024 if gateway.hwm_kib else None
        if isinstance(gateway, OpenVpnGateway):
            gateway.stop()
    return turn


# --------------------------------------------------------------------------- the table


def verdict(metric: Metric, theirs: float | None, ours: float | None) -> str:
    if not metric.target or ours is None:
        return ""
    if metric.key == "rss_mb":
        return "ok" if ours < RSS_LIMIT_MB else "MISS"
    if metric.key == "leaks":
        return "ok" if ours == 0 else "MISS"
    if theirs is None:
        return ""
    good = ours >= theirs if metric.better == "higher" else ours <= theirs
    return "ok" if good else "MISS"


def table(results: dict[str, dict[str, float | None]]) -> tuple[str, list[dict[str, Any]]]:
    header = ("metric", LABELS["openvpn"], LABELS["ours"], "ratio", "target")
    return comparison_table(METRICS, results, header, verdict)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run (10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order (2)")
    p.add_argument("--quick", action="store_true",
                   help="1 round, 1 s iperf3 runs, short fault phases (a smoke run)")  # fmt: skip
    p.add_argument("--output", type=Path, default=RESULTS / "gateway.json", help="JSON results")
    p.add_argument("--png", type=Path, default=RESULTS / "gateway-timeline.png",
                   help="the timeline picture")  # fmt: skip
    args = p.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be between 1 and 600")
    if not 1 <= args.rounds <= 10:
        p.error("--rounds must be between 1 and 10")
    args.timing = Timing()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
        args.timing = Timing(steady=1.5, server_down=1.5, flap_down=1.5)
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from bench.timeline import draw  # matplotlib: a clear error before an hour of work

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "timing": vars(args.timing),
        "loadavg_before": os.getloadavg(),
        **versions(),
    }
    turns: dict[str, list[Turn]] = {name: [] for name in CONTENDERS}
    logs = args.output.parent / "gateway-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mvpn-gwbench-") as tmp:
        for round_ in range(args.rounds):
            order = CONTENDERS if round_ % 2 == 0 else tuple(reversed(CONTENDERS))
            for name in order:
                log(f"round {round_ + 1} of {args.rounds}: {LABELS[name]}")
                workdir = Path(tmp) / f"{name}-{round_ + 1}"
                try:
                    turns[name].append(run_turn(name, workdir, args))
                except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                    log(f"{name}: FAILED: {e}")
                    turns[name].append(Turn(name, errors={"turn": str(e)}))
                for path in Path(tmp).glob("*.log"):
                    path.replace(logs / path.name)
    meta["loadavg_after"] = os.getloadavg()
    results = {name: median_metrics([t.metrics for t in turns[name]]) for name in CONTENDERS}
    text, rows = table(results)
    load = meta["loadavg_before"]
    print()
    print(
        f"Qubes gateway, UDP tunnel (tls-crypt, AES-256-GCM), {meta['cpus']} CPUs, "
        f"{args.rounds} round(s) alternating (medians), {args.seconds:g} s per iperf3 run, "
        f"{meta['python']}, {meta['openvpn']}; load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} before (other work on this machine skews the numbers)"
    )
    print(text)
    for name in CONTENDERS:
        for turn in turns[name]:
            for what, error in turn.errors.items():
                print(f"{LABELS[name]} {what}: ERROR {error.splitlines()[0] if error else ''}")
    firsts = {name: turns[name][0] for name in CONTENDERS if turns[name]}
    draw({LABELS[n]: t.timeline() for n, t in firsts.items()}, args.png,
         title=f"AppVM traffic through sys-vpn across faults ({meta['date']})")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "meta": meta,
        "rows": rows,
        "turns": {n: [{"metrics": t.metrics, "errors": t.errors, "timeline": t.timeline()}
                      for t in turns[n]] for n in CONTENDERS},
    }, indent=1) + "\n")  # fmt: skip
    print(f"\nwritten: {args.output}, {args.png} (gateway logs in {logs})")
    return 0 if all(t.metrics and not t.errors for ts in turns.values() for t in ts) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        sys.exit(130)
