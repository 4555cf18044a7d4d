"""Small extensions of the test helpers for `bench/compare.py` (not a test module).

- `Pinger`: ICMP echo from inside a namespace on a raw socket (no process spawn per probe), so
  "time to tunnel up" has ~5 ms resolution and costs the same for every client.
- `iperf3`: one iperf3 run between two namespaces (a one-off server per run, so a broken run
  never leaves a busy server behind), returning the parsed JSON.
- `ProcStats`: CPU seconds and peak RSS of a process from /proc.
- `PySpy`: optional py-spy sampling of a process, reduced to "top functions by self time".
- `Metric`, `median_metrics`, `comparison_table`: the openvpn-vs-ours table of bench/compare.py
  and bench/gateway.py (each keeps its own metrics and verdicts).

Everything is bounded by timeouts; processes are stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.netns import Netns, stop_process, wait_until

IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- ping


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Pinger:
    """ICMP echo requests to `address` from a raw socket created inside `ns`."""

    def __init__(self, ns: Netns, address: str) -> None:
        self.address = address
        self.sock: socket.socket = ns.call(
            lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        )
        self.sock.setblocking(False)
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self.seq = 0

    def probe(self, wait: float) -> bool:
        """Send one echo request; True if any echo reply of ours arrives within `wait` seconds.

        While the tunnel is down, sending fails (no route): that is a "no"."""
        self.seq = (self.seq + 1) & 0xFFFF
        body = struct.pack("!HH", self.ident, self.seq) + b"miragevpn-bench!"
        header = struct.pack("!BBH", 8, 0, 0)
        packet = struct.pack("!BBH", 8, 0, _checksum(header + body)) + body
        try:
            self.sock.sendto(packet, (self.address, 0))
        except OSError:
            time.sleep(wait)
            return False
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            for _ in range(64):  # bounded drain
                try:
                    data, (source, _) = self.sock.recvfrom(2048)
                except BlockingIOError:
                    break
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8 or source != self.address:
                    continue
                kind, _, _, ident = struct.unpack("!BBHH", data[ihl : ihl + 6])
                if kind == 0 and ident == self.ident:
                    return True
        return False

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- iperf3


def _listening(ns: Netns, port: int) -> bool:
    out = ns.run(["ss", "-Hltn", f"sport = :{port}"], timeout=10, check=False).stdout
    return bool(out.strip())


def iperf3(
    server_ns: Netns,
    client_ns: Netns,
    address: str,
    seconds: float,
    args: tuple[str, ...] = (),
    *,
    port: int = 5201,
) -> dict[str, Any]:
    """Run `iperf3 -c address -t seconds -J *args` in client_ns against a one-off server.

    Raises RuntimeError with iperf3's message if the run fails."""
    server = server_ns.spawn([IPERF3, "-s", "-1", "-B", address, "-p", str(port)])
    try:
        wait_until(lambda: _listening(server_ns, port), 10, what="iperf3 server listening")
        argv = [IPERF3, "-c", address, "-p", str(port), "-t", f"{seconds:g}", "-J", *args]
        result = client_ns.run(argv, timeout=seconds + 40, check=False)
    finally:
        stop_process(server, 3.0)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 {' '.join(args)}: {result.stderr or result.stdout}") from None
    if "error" in report:
        raise RuntimeError(f"iperf3 {' '.join(args)}: {report['error']}")
    return report


def tcp_mbits(report: dict[str, Any]) -> tuple[float, int]:
    """(Mbit/s measured by the receiver, TCP retransmissions by the sender)."""
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0))


@dataclass(frozen=True)
class UdpResult:
    offered_pps: float  # packets/s the sender wrote
    received_pps: float  # packets/s that reached the far iperf3
    loss_percent: float


def udp_rates(report: dict[str, Any]) -> UdpResult:
    """Packet rates of a `-u` run (either direction): iperf3's end summary counts, for the
    receiving side, `packets` sent and `lost_packets` of those."""
    summary = report["end"]["sum"]
    seconds = float(summary["seconds"]) or 1.0
    sent = int(summary["packets"])
    lost = max(0, int(summary["lost_packets"]))
    return UdpResult(sent / seconds, (sent - lost) / seconds, 100.0 * lost / max(sent, 1))


# --------------------------------------------------------------------------- /proc


@dataclass
class ProcStats:
    pid: int

    def cpu_seconds(self) -> float:
        """utime + stime so far (0 if the process is gone)."""
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status_kib(self, key: str) -> int | None:
        """A `VmHWM`/`VmRSS`-style line of /proc/PID/status, in KiB."""
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return None


class CpuMeter:
    """CPU percent of some processes over an interval: `with CpuMeter(stats) as m: ...`."""

    def __init__(self, *procs: ProcStats) -> None:
        self.procs = procs
        self.percent: list[float] = [0.0] * len(procs)

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._c0 = [p.cpu_seconds() for p in self.procs]
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        self.percent = [
            100.0 * (p.cpu_seconds() - c0) / elapsed
            for p, c0 in zip(self.procs, self._c0, strict=True)
        ]


# --------------------------------------------------------------------------- py-spy


def find_py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")  # the venv's, if installed there
    return str(here) if here.exists() else shutil.which("py-spy")


class PySpy:
    """`py-spy record --format raw` of one process for a while; `top_self()` afterwards."""

    def __init__(
        self, exe: str, pid: int, seconds: float, out: Path, *, native: bool = False
    ) -> None:
        self.out = out
        argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        argv += ["--native"] if native else ["--nonblocking"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.timeout = seconds + 30

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 2.0)
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()

    def stop(self) -> None:
        stop_process(self.proc, 2.0)

    def summary(self, n: int = 15) -> dict[str, list[tuple[str, float]]]:
        return profile_summary(self.out, n)


# Where a leaf frame's self time goes: syscalls are attributed by py-spy to the Python line
# that calls into C, so the lines doing IO are named here.
_SYSCALL_LINES = {
    "sendto (asyncio/selector_events.py": "syscall: UDP send",
    "_read_ready (asyncio/selector_events.py": "syscall: UDP recv",
    "Tun.write (qubes_miragevpn/netlink.py": "syscall: tun write",
    "Tun.read (qubes_miragevpn/netlink.py": "syscall: tun read",
    "EpollSelector.select (selectors.py": "syscall: epoll",
}
_SYSCALL_CALLS = (".send(", ".recvfrom(", "os.write(", "os.read(", ".poll(", ".recv(")


def _category(leaf: str) -> str:
    file = leaf[leaf.find("(") + 1 : leaf.rfind(":")] if "(" in leaf else leaf
    if "cryptography/" in file:
        return "cryptography (AEAD calls)"
    if "asyncio/" in file or "selectors.py" in file:
        return "asyncio event loop"
    if "qubes_miragevpn/" in file:
        return "runtime (service/transport)"
    if "miragevpn/" in file:
        return "engine (client/sessioncrypto)"
    return "other"


def profile_summary(collapsed: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """From a collapsed-stack file ("f (file:line);g (file:line) count" per line):

    - "self": the top `n` functions by self time (lines merged into their function);
    - "lines": the top `n` (function, line) leaves, which name the syscall lines;
    - "categories": self time by area, syscalls (identified by line) apart;
    - "inclusive": the top `n` functions by time including callees."""
    functions: Counter[str] = Counter()
    lines_: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        text = collapsed.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in text:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        lines_[leaf] += count
        functions[_strip_line(leaf)] += count
        for frame in {_strip_line(f) for f in frames}:
            inclusive[frame] += count
        category = _category(leaf)
        for prefix, name in _SYSCALL_LINES.items():
            if prefix in leaf and _is_io_line(leaf):
                category = name
        categories[category] += count
    if not total:
        return {}

    def top(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(key, 100.0 * c / total) for key, c in counter.most_common(k)]

    return {
        "samples": [("samples", float(total))],
        "categories": top(categories, 20),
        "self": top(functions, n),
        "lines": top(lines_, n),
        "inclusive": top(inclusive, n + 10),
    }


def _strip_line(frame: str) -> str:
    """ "f (file.py:12)" -> "f (file.py)"."""
    head, sep, _ = frame.rpartition(":")
    return head + ")" if sep and frame.endswith(")") else frame


def _is_io_line(leaf: str) -> bool:
    """Is the source line of this frame a call into the kernel (read, write, send, ...)?"""
    import linecache

    file = leaf[leaf.find("(") + 1 : leaf.rfind(":")]
    try:
        number = int(leaf[leaf.rfind(":") + 1 : -1])
    except ValueError:
        return False
    for base in (*sys.path, str(Path(__file__).resolve().parents[1] / "src")):
        source = linecache.getline(str(Path(base) / file), number)
        if source:
            return any(call in source for call in _SYSCALL_CALLS)
    return True  # source not found: trust the function name


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str
    better: str | None  # "higher" | "lower" | None (informational)
    target: str = ""


def median_metrics(runs: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the median over the rounds that measured it."""
    keys = {key for run in runs for key in run}
    out: dict[str, float | None] = {}
    for key in sorted(keys):
        values = [v for run in runs if (v := run.get(key)) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def comparison_table(
    metrics: Sequence[Metric],
    results: Mapping[str, Mapping[str, float | None]],
    header: Sequence[str],
    verdict: Callable[[Metric, float | None, float | None], str],
) -> tuple[str, list[dict[str, Any]]]:
    """The text table (`header`: five column titles) and its rows for the JSON report, one per
    metric that either contender measured: openvpn's value, ours, the ratio ours/openvpn and
    the target with `verdict(metric, openvpn's, ours)` ("ok", "MISS" or "")."""
    rows: list[dict[str, Any]] = []
    lines: list[list[str]] = [list(header)]
    for m in metrics:
        theirs = results.get("openvpn", {}).get(m.key)
        ours = results.get("ours", {}).get(m.key)
        if theirs is None and ours is None:
            continue
        r = ratio(ours, theirs)
        met = verdict(m, theirs, ours)
        rows.append({"metric": m.key, "label": m.label.strip(), "openvpn": theirs, "ours": ours,
                     "ratio": r, "target": m.target, "met": met or None})  # fmt: skip
        lines.append([
            m.label,
            "-" if theirs is None else m.fmt.format(theirs),
            "-" if ours is None else m.fmt.format(ours),
            "-" if r is None else f"{r:.2f}",
            f"{m.target} {met}".strip(),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:4], widths[1:4], strict=True)]
        out.append(" | ".join([*cells, line[4]]).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out), rows
