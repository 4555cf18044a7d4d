"""Benchmark (a script, not a test): our client vs the real `openvpn` client, side by side.

    .venv/bin/python bench/compare.py [--seconds 10] [--proto udp|tcp] [--cipher AES-256-GCM]
                                      [--protection tls-auth|tls-crypt] [--only ours|openvpn]
                                      [--profile [--profile-native]] [--server-dco]

One run builds a server and a client network namespace joined by veth (tests/helpers/netns.py),
a throwaway PKI (tests/helpers/pki.py) and ONE real OpenVPN 2.6 server (tests/helpers/openvpn.py;
userspace, `disable-dco`, so both clients face the same server). Then, for the real `openvpn`
client and then `miragevpn-client`, in turn:

- time to tunnel up: from process start to the first ICMP echo answered by the server's tun
  address 10.8.0.1 through the tunnel (the same probe for both), and to the "ready" log line
  ("Initialization Sequence Completed" / "tunnel up:");
- TCP throughput through the tunnel, both directions (iperf3 -c 10.8.0.1, and -R);
- small-packet rate, both directions: iperf3 -u -l 64 -b 0, packets/s received by the far
  iperf3, and the loss;
- peak RSS (VmHWM) of the client process, and its CPU use during each run (and the server's).

It prints a table (metric | openvpn | ours | ours/openvpn | target) and writes it as JSON to
bench/results/latest.json, with the logs beside it. With `--profile`, py-spy samples our client
during each traffic run and the top functions by self time are printed and saved (profiling
slows the client: those runs' numbers are not comparable).

All traffic stays inside the namespaces made here; every wait is bounded; the namespaces and
every process are removed on exit, on errors and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchlib import (  # noqa: E402
    CpuMeter,
    Metric,
    Pinger,
    ProcStats,
    PySpy,
    comparison_table,
    find_py_spy,
    iperf3,
    median_metrics,
    ratio,
    tcp_mbits,
    udp_rates,
)
from tests.helpers.netns import NetnsPair, netns_pair_context, stop_process  # noqa: E402
from tests.helpers.openvpn import (  # noqa: E402
    OPENVPN,
    READY_LINE,
    SERVER_TUN_ADDRESS,
    OpenVpnClient,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
    server_config,
)
from tests.helpers.ourclient import TUNNEL_UP, OurClient  # noqa: E402
from tests.helpers.pki import PkiFiles, make_pki, write_pki  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UP_TIMEOUT = 40.0  # seconds from process start to the first answered ping
PROBE_INTERVAL = 0.005
CONTENDERS = ("openvpn", "ours")
RSS_LIMIT_MB = 60.0


METRICS = (
    Metric("up_ping_s", "time to tunnel up, first ping (s)", "{:.3f}", "lower", "ratio <= 1.0"),
    Metric("up_log_s", "time to 'ready' log line (s)", "{:.3f}", "lower"),
    Metric("tcp_up_mbits", "TCP client->server (Mbit/s)", "{:.0f}", "higher", "ratio >= 1.0"),
    Metric("tcp_down_mbits", "TCP server->client (Mbit/s)", "{:.0f}", "higher", "ratio >= 1.0"),
    Metric("tcp_up_retrans", "  TCP up retransmits", "{:.0f}", None),
    Metric("tcp_down_retrans", "  TCP down retransmits", "{:.0f}", None),
    Metric("udp_up_pps", "small UDP client->server (rx pkt/s)", "{:.0f}", "higher", "ratio >= 1.0"),
    Metric("udp_up_loss", "  loss (%)", "{:.1f}", None),
    Metric("udp_up_offered", "  offered (pkt/s)", "{:.0f}", None),
    Metric(
        "udp_down_pps", "small UDP server->client (rx pkt/s)", "{:.0f}", "higher", "ratio >= 1.0"
    ),
    Metric("udp_down_loss", "  loss (%)", "{:.1f}", None),
    Metric("udp_down_offered", "  offered (pkt/s)", "{:.0f}", None),
    Metric("rss_peak_mb", "peak RSS, VmHWM (MB)", "{:.1f}", "lower", f"ours < {RSS_LIMIT_MB:g} MB"),
    Metric("cpu_tcp_up", "client CPU % during TCP up", "{:.0f}", None),
    Metric("cpu_tcp_down", "client CPU % during TCP down", "{:.0f}", None),
    Metric("cpu_udp_up", "client CPU % during UDP up", "{:.0f}", None),
    Metric("cpu_udp_down", "client CPU % during UDP down", "{:.0f}", None),
    Metric("server_cpu_tcp_up", "server CPU % during TCP up", "{:.0f}", None),
    Metric("server_cpu_tcp_down", "server CPU % during TCP down", "{:.0f}", None),
    Metric("server_cpu_udp_up", "server CPU % during UDP up", "{:.0f}", None),
    Metric("server_cpu_udp_down", "server CPU % during UDP down", "{:.0f}", None),
)

# name, iperf3 arguments (after -c ADDRESS -t N -J)
TRAFFIC = (
    ("tcp_up", ()),
    ("tcp_down", ("-R",)),
    ("udp_up", ("-u", "-b", "0")),
    ("udp_down", ("-u", "-b", "0", "-R")),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- server


def start_server(
    pair: NetnsPair, scenario: Scenario, files: PkiFiles, workdir: Path, *, dco: bool
) -> OpenVpnServer:
    if not dco:
        return OpenVpnServer.start(pair.server, scenario, files, workdir, pair.server_address)
    # Same config without `disable-dco`: openvpn uses DCO if the kernel has it, else userspace.
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "server.conf"
    config.write_text(server_config(scenario, files).replace("disable-dco\n", ""))
    server = OpenVpnServer(pair.server, config, workdir / "server.log", address=pair.server_address)
    server.spawn()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def server_dco_state(server: OpenVpnServer) -> str:
    text = server.log_text()
    if "disable-dco" in server.config_path.read_text():
        return "off (disable-dco)"
    if "DCO" in text and ("not available" in text or "disabled" in text.lower()):
        return "off (not available in this kernel)"
    return "on?" if "dco" in text.lower() else "off"


# --------------------------------------------------------------------------- one client


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log_text: Callable[[], str]
    log_path: Path
    ready_marker: str
    ready_before: int = 0  # marker lines already in the log (earlier rounds append to it)

    def ready(self) -> bool:
        return self.log_text().count(self.ready_marker) > self.ready_before


def spawn_client(
    name: str, pair: NetnsPair, scenario: Scenario, files: PkiFiles, workdir: Path
) -> Running:
    workdir.mkdir(parents=True, exist_ok=True)
    marker = READY_LINE if name == "openvpn" else TUNNEL_UP
    log_path = workdir / ("openvpn-client.log" if name == "openvpn" else "miragevpn-client.log")
    before = log_path.read_text(errors="replace").count(marker) if log_path.exists() else 0
    if name == "openvpn":
        config = workdir / "openvpn-client.conf"
        config.write_text(client_config(scenario, files, pair.server_address, real=True))
        real = OpenVpnClient(pair.client, config, workdir / "openvpn-client.log")
        real.spawn()
        assert real.proc is not None
        return Running(name, real.proc, real.log_text, real.log_path, marker, before)
    text = client_config(scenario, files, pair.server_address, real=False)
    ours = OurClient.start(pair.client, text, workdir)
    return Running(name, ours.proc, ours.log_text, ours.log_path, marker, before)


def cpu_text(cpu: CpuMeter) -> str:
    client, server = cpu.percent
    return f"CPU client {client:.0f}%, server {server:.0f}%"


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_up(client: Running, pinger: Pinger, t0: float) -> tuple[float, float | None]:
    """(seconds to the first answered ping, seconds to the ready log line if seen by then)."""
    log_seconds: float | None = None
    deadline = t0 + UP_TIMEOUT
    while time.monotonic() < deadline:
        if client.proc.poll() is not None:
            raise RuntimeError(
                f"{client.name} exited {client.proc.returncode} before the tunnel was up:\n"
                + tail(client.log_text())
            )
        if pinger.probe(PROBE_INTERVAL):
            up = time.monotonic() - t0
            if log_seconds is None and client.ready():
                log_seconds = up
            return up, log_seconds
        if log_seconds is None and client.ready():
            log_seconds = time.monotonic() - t0
    raise TimeoutError(
        f"{client.name}: no ping through the tunnel after {UP_TIMEOUT:g}s:\n"
        + tail(client.log_text())
    )


def run_contender(
    name: str,
    pair: NetnsPair,
    scenario: Scenario,
    files: PkiFiles,
    workdir: Path,
    server_stats: ProcStats,
    args: argparse.Namespace,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    metrics: dict[str, float | None] = {}
    extra: dict[str, Any] = {"errors": {}, "profiles": {}}
    pinger = Pinger(pair.client, SERVER_TUN_ADDRESS)
    log(f"{name}: starting")
    t0 = time.monotonic()
    client = spawn_client(name, pair, scenario, files, workdir)
    try:
        up, up_log = wait_up(client, pinger, t0)
        metrics["up_ping_s"], metrics["up_log_s"] = up, up_log
        log(f"{name}: tunnel up after {up:.3f}s (log line: {up_log})")
        stats = ProcStats(client.proc.pid)
        py_spy = find_py_spy() if (args.profile and name == "ours") else None
        if args.profile and name == "ours" and py_spy is None:
            log("--profile: py-spy not found (.venv/bin/pip install py-spy); not profiling")
        for test, iperf_args in TRAFFIC:
            if client.proc.poll() is not None:
                extra["errors"][test] = f"{name} exited {client.proc.returncode}"
                break
            full_args = iperf_args
            if test.startswith("udp"):
                full_args = (*iperf_args, "-l", str(args.small_size))
            time.sleep(1.0)  # let queues drain between runs
            profiler = None
            if py_spy is not None:
                out = RESULTS / f"profile-{test}.txt"
                profiler = PySpy(py_spy, client.proc.pid, args.seconds, out, native=args.native)
            try:
                with CpuMeter(stats, server_stats) as cpu:
                    report = iperf3(
                        pair.server, pair.client, SERVER_TUN_ADDRESS, args.seconds, full_args
                    )
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
                extra["errors"][test] = str(e)
                log(f"{name}: {test} failed: {e}")
                continue
            finally:
                if profiler is not None:
                    profiler.finish()
            metrics[f"cpu_{test}"], metrics[f"server_cpu_{test}"] = cpu.percent
            if test.startswith("tcp"):
                mbits, retrans = tcp_mbits(report)
                metrics[f"{test}_mbits"], metrics[f"{test}_retrans"] = mbits, retrans
                log(f"{name}: {test} {mbits:.0f} Mbit/s, {retrans} retransmits, {cpu_text(cpu)}")
            else:
                udp = udp_rates(report)
                metrics[f"{test}_pps"] = udp.received_pps
                metrics[f"{test}_loss"] = udp.loss_percent
                metrics[f"{test}_offered"] = udp.offered_pps
                log(
                    f"{name}: {test} {udp.received_pps:.0f} pkt/s received "
                    f"({udp.offered_pps:.0f} offered, {udp.loss_percent:.1f}% lost), "
                    + cpu_text(cpu)
                )
            if profiler is not None:
                extra["profiles"][test] = profiler.summary(args.profile_top)
        hwm = stats.status_kib("VmHWM")
        metrics["rss_peak_mb"] = hwm / 1024 if hwm is not None else None
    finally:
        stop_process(client.proc, 8.0)
        pinger.close()
        extra["log"] = client.log_text()
    return metrics, extra


# --------------------------------------------------------------------------- report


def verdict(metric: Metric, ours: float | None, r: float | None) -> str:
    if not metric.target:
        return ""
    if metric.key == "rss_peak_mb":
        return "" if ours is None else ("ok" if ours < RSS_LIMIT_MB else "MISS")
    if r is None:
        return ""
    good = r >= 1.0 if metric.better == "higher" else r <= 1.0
    return "ok" if good else "MISS"


def table(results: dict[str, dict[str, float | None]]) -> tuple[str, list[dict[str, Any]]]:
    header = ("metric", "openvpn", "ours", "ours/openvpn", "target")
    return comparison_table(
        METRICS, results, header, lambda m, theirs, ours: verdict(m, ours, ratio(ours, theirs))
    )


def print_profile(test: str, summary: dict[str, list[tuple[str, float]]]) -> None:
    samples = int(summary["samples"][0][1]) if summary.get("samples") else 0
    print(f"\nours, {test}: py-spy, {samples} samples (RESULTS/profile-{test}.txt)")
    for title, key in (
        ("self time by area", "categories"),
        ("top functions by self time", "self"),
        ("top lines by self time", "lines"),
        ("top functions including callees", "inclusive"),
    ):
        print(f"  {title}:")
        for frame, percent in summary.get(key, []):
            print(f"    {percent:5.1f}%  {frame}")


def versions() -> dict[str, str]:
    import cryptography

    first = subprocess.run(
        [OPENVPN, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.splitlines()
    iperf = subprocess.run(
        ["iperf3", "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.splitlines()
    return {
        "openvpn": first[0] if first else "?",
        "iperf3": iperf[0] if iperf else "?",
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "kernel": platform.release(),
        "cpus": str(len(os.sched_getaffinity(0))),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run (10)")
    p.add_argument("--proto", choices=("udp", "tcp"), default="udp", help="tunnel transport")
    p.add_argument("--cipher", default="AES-256-GCM", help="data-channel cipher (AES-256-GCM)")
    p.add_argument(
        "--protection",
        choices=("tls-auth", "tls-crypt"),
        default="tls-crypt",
        help="control channel",
    )
    p.add_argument("--only", choices=CONTENDERS, help="run one client only")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternate the clients N times, report medians (1)"
    )
    p.add_argument(
        "--small-size", type=int, default=64, help="UDP payload bytes of the small packets"
    )
    p.add_argument(
        "--server-dco", action="store_true", help="let the server use DCO if the kernel has it"
    )
    p.add_argument(
        "--profile", action="store_true", help="py-spy our client during the traffic runs"
    )
    p.add_argument("--native", action="store_true", help="with --profile: include native frames")
    p.add_argument("--profile-top", type=int, default=15, help="functions listed per profile (15)")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="JSON results")
    args = p.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        p.error("--seconds must be between 1 and 600")
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be between 1 and 20")
    if not 16 <= args.small_size <= 1400:
        p.error("--small-size must be between 16 and 1400")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    for tool in ("iperf3", "ss", "ip"):
        if shutil.which(tool) is None:
            print(f"compare.py: {tool} not found (make setup installs it)", file=sys.stderr)
            return 2
    scenario = Scenario(
        transport=args.proto,
        protection=Protection(args.protection),
        data_ciphers=(args.cipher.upper(),),
    )
    names = (args.only,) if args.only else CONTENDERS
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, dict[str, float | None]] = {}
    extras: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": args.seconds,
        "proto": args.proto,
        "cipher": scenario.data_ciphers[0],
        "protection": args.protection,
        "small_size": args.small_size,
        "profiled": args.profile,
        "loadavg_before": os.getloadavg()[0],
        **versions(),
    }
    with tempfile.TemporaryDirectory(prefix="mvpn-bench-") as tmp, netns_pair_context() as pair:
        workdir = Path(tmp)
        files = write_pki(make_pki(), workdir / "pki")
        log(f"server: openvpn {scenario.label} in {pair.server.name}")
        server = start_server(pair, scenario, files, workdir, dco=args.server_dco)
        try:
            assert server.proc is not None
            meta["server_dco"] = server_dco_state(server)
            server_stats = ProcStats(server.proc.pid)
            rounds: dict[str, list[dict[str, float | None]]] = {name: [] for name in names}
            for round_ in range(args.rounds):  # alternate the clients: load drifts hit both
                for name in names:
                    if args.rounds > 1:
                        log(f"round {round_ + 1} of {args.rounds}")
                    try:
                        metrics, extras[name] = run_contender(
                            name, pair, scenario, files, workdir / name, server_stats, args
                        )
                        rounds[name].append(metrics)
                    except (RuntimeError, TimeoutError) as e:
                        log(f"{name}: FAILED: {e}")
                        extras[name] = {"errors": {"start": str(e)}}
                    time.sleep(1.0)
            for name in names:
                results[name] = median_metrics(rounds[name])
            meta["rounds"] = {name: rounds[name] for name in names}
        finally:
            (logs / "server.log").write_text(server.log_text())
            server.stop()
            for name, extra in extras.items():
                if "log" in extra:
                    (logs / f"{name}.log").write_text(extra.pop("log"))
    meta["loadavg_after"] = os.getloadavg()[0]
    text, rows = table(results)
    print()
    print(
        f"{args.proto.upper()} tunnel, {meta['cipher']}, {args.protection}, server DCO "
        f"{meta['server_dco']}, {meta['cpus']} CPUs, {args.seconds:g}s per run, "
        f"{args.rounds} round(s) (medians), "
        f"small packets {args.small_size} B UDP payload, load average "
        f"{meta['loadavg_before']:.2f} before (other work on this machine skews the numbers)"
        + (" (PROFILED: ours slowed by py-spy)" if args.profile else "")
    )
    print(text)
    for name, extra in extras.items():
        for test, error in extra.get("errors", {}).items():
            print(f"{name} {test}: ERROR {error.splitlines()[0] if error else ''}")
        for test, summary in extra.get("profiles", {}).items():
            print_profile(test, summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"meta": meta, "rows": rows, "raw": results, "extra": extras}, indent=2) + "\n"
    )
    print(f"\nwritten: {args.output} (logs in {logs})")
    return 0 if all(results.get(n) for n in names) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        sys.exit(130)
