"""bench/gateway.py: the script runs end to end in its quick mode (slow: `make soak`), and its
parts (table, verdicts, the kill switch, the pcap timestamps, the picture) on their own.

No timing is asserted here: the speed targets live in the benchmark's output."""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bench.gateway import (
    METRICS,
    OPENVPN_UNIT,
    OUR_UNIT,
    restart_sec,
    table,
    through_server_tun,
    time_span,
    udp_received,
    verdict,
)
from bench.gwtraffic import Stream, stamped_frames

from bench import killswitch
from tests.helpers.netns import Netns

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_table_has_a_row_per_measured_metric_with_ratio_and_verdict() -> None:
    results = {
        "openvpn": {"tcp_up_mbits": 200.0, "sigkill_s": 1.0, "rss_mb": 9.0, "leaks": 0.0},
        "ours": {"tcp_up_mbits": 100.0, "sigkill_s": 0.5, "rss_mb": 45.0, "leaks": 0.0},
    }
    text, rows = table(results)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == [
        "metric", "openvpn gateway", "ours", "ratio", "target"]  # fmt: skip
    by_key = {row["metric"]: row for row in rows}
    assert set(by_key) == {"tcp_up_mbits", "sigkill_s", "rss_mb", "leaks"}
    assert by_key["tcp_up_mbits"]["ratio"] == 0.5 and by_key["tcp_up_mbits"]["met"] == "MISS"
    assert by_key["sigkill_s"]["met"] == "ok"  # recovery: lower is better
    assert by_key["rss_mb"]["met"] == "MISS"  # an absolute limit, not a ratio
    assert by_key["leaks"]["met"] == "ok"
    assert any("TCP AppVM->host" in line and "0.50" in line for line in lines)


def test_verdicts_follow_the_direction_of_each_metric() -> None:
    metric = {m.key: m for m in METRICS}
    assert verdict(metric["udp_up_pps"], 100.0, 100.0) == "ok"  # >= 1.0x
    assert verdict(metric["udp_up_pps"], 100.0, 99.0) == "MISS"
    assert verdict(metric["flap_s"], 2.0, 2.5) == "MISS"
    assert verdict(metric["leaks"], 0.0, 1.0) == "MISS"
    assert verdict(metric["start_s"], 1.0, 5.0) == ""  # informational
    assert verdict(metric["tcp_up_mbits"], None, 5.0) == ""  # nothing to compare with


def test_udp_counts_what_the_receiver_read_and_must_match_the_server_tun() -> None:
    # iperf3 3.12's end of a -u run: 1000 written, 600 read, 100 counted lost (the 300 dropped
    # after the last datagram that arrived are in no count but the bytes)
    end = {
        "sum_sent": {"seconds": 2.0, "packets": 1000, "bytes": 64000},
        "sum_received": {"seconds": 2.0, "packets": 1000, "lost_packets": 100, "bytes": 38400},
        "sum": {"seconds": 2.0, "packets": 1000, "lost_packets": 100},
    }
    report = {"end": end}
    assert udp_received(report) == (300.0, 500.0)
    moved = {"rx_packets": 600, "rx_bytes": 0, "tx_packets": 10, "tx_bytes": 0}
    assert through_server_tun("udp_up", report, moved) is None
    assert "tx moved 10 packets" in str(through_server_tun("udp_down", report, moved))
    tcp = {"end": {"sum_received": {"bytes": 10_000}}}
    assert through_server_tun("tcp_down", tcp, {**moved, "tx_bytes": 10_400}) is None
    assert through_server_tun("tcp_up", tcp, {**moved, "rx_bytes": 900}) is not None


def test_recovery_counts_from_the_first_datagram_sent_after_the_event() -> None:
    stream = Stream(None, None, "198.51.100.80", ipaddress.IPv4Network("10.8.0.0/24"))  # type: ignore[arg-type]
    stream.sent = {1: 0.99, 2: 1.00, 3: 1.50}
    # 1 was in flight at the event (arrives after it: proves nothing), 2 left sys-vpn outside
    # the tunnel, 3 is the first one sent after the event that came through
    stream.arrivals = [(1.01, True, 1), (1.02, False, 2), (1.60, True, 3)]
    assert stream.first_through_tunnel(1.0) == pytest.approx(0.60)
    assert stream.first_through_tunnel(1.6) is None
    assert stream.outside_tunnel() == 1


def test_pcap_records_get_their_timestamps() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    frame = bytes(6) + bytes.fromhex("00163e5e6c0a") + b"\x08\x06" + bytes(28)  # ARP
    records = b"".join(
        struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame
        for seconds, micros in ((100, 250000), (101, 500000))
    )
    stamped = stamped_frames(header + records, wall_to_monotonic=-50.0)
    assert [s.when for s in stamped] == [50.25, 51.5]
    assert all(s.frame.ethertype == 0x0806 for s in stamped)


@pytest.mark.netns
def test_the_kill_switch_loads_and_reads_as_the_recipe() -> None:
    document = killswitch.build_document(
        server=ipaddress.IPv4Address("198.51.100.1"), port=1194, proto="udp", uplink="eth0"
    )
    with Netns.create("killswitch") as ns:
        for _ in range(2):  # replacing the table in place works too
            ns.run(["nft", "-j", "-f", "-"], input=killswitch.as_text(document))
        listed = ns.run(["nft", "list", "table", "inet", killswitch.TABLE]).stdout
        ns.run(["nft", "-j", "-f", "-"], input=killswitch.as_text(killswitch.remove_document()))
        after = ns.run(["nft", "list", "tables"]).stdout
    assert 'iifname "vif*" oifname != "tun0" drop' in listed
    assert "policy drop" in listed
    assert 'oifname "eth0" ip daddr 198.51.100.1 udp dport 1194 accept' in listed
    assert killswitch.TABLE not in after


def test_the_timeline_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="make setup installs python3-matplotlib")
    from bench.timeline import draw, per_second

    assert per_second([0.1, 0.2, 2.5], 3.0) == ([0, 1, 2, 3], [2, 0, 1, 0])
    timeline = {
        "events": [(1.0, "server down"), (3.0, "server back")],
        "blocked": [(1.0, 3.4, "server back"), (5.0, None, "SIGKILL")],
        "tunnel_arrivals": [0.5, 0.6, 3.5, 4.0],
        "leaks": [(2.0, "a frame")],
    }
    out = tmp_path / "t.png"
    draw({"openvpn gateway": timeline, "ours": timeline}, out, title="test")
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
@pytest.mark.qubes
@pytest.mark.netns
@pytest.mark.timeout(600)
def test_quick_run_prints_the_table_and_draws_the_timeline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="make setup installs python3-matplotlib")
    out, png = tmp_path / "gateway.json", tmp_path / "timeline.png"
    argv = [sys.executable, str(ROOT / "bench" / "gateway.py"), "--quick",
            "--output", str(out), "--png", str(png)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("metric "))
    assert [c.strip() for c in lines[header].split("|")] == [
        "metric", "openvpn gateway", "ours", "ratio", "target"]  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    measured = {row["metric"] for row in rows if row["ours"] is not None and row["openvpn"]
                is not None}  # fmt: skip
    assert {m.key for m in METRICS} - {"leaks"} <= measured, rows
    leaks = next(row for row in rows if row["metric"] == "leaks")
    assert leaks["ours"] == 0 and leaks["openvpn"] == 0, leaks  # safety, not speed
    assert png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("span", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("5", 5.0), ("1min 30s", 90.0), ("250us", 0.00025)],
)
def test_time_span_reads_systemd_spans(span: str, seconds: float) -> None:
    assert time_span(span) == pytest.approx(seconds)


@pytest.mark.parametrize("span", ["", "fast", "5 parsecs", "ms"])
def test_time_span_refuses_what_systemd_would(span: str) -> None:
    with pytest.raises(ValueError, match="time span"):
        time_span(span)


def test_restart_sec_is_the_units_delay_and_refuses_a_unit_that_stays_dead() -> None:
    assert restart_sec("[Service]\nRestart=always\nRestartSec=500ms\n", unit="a") == 0.5
    assert restart_sec("[Service]\nRestart=on-failure\n", unit="b") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not restarted after SIGKILL"):
        restart_sec("[Service]\nType=notify\nExecStart=/usr/sbin/openvpn\n", unit="c")
    with pytest.raises(ValueError, match="Restart=on-watchdog"):  # SIGKILL is no watchdog timeout
        restart_sec("[Service]\nRestart=on-watchdog\n", unit="d")
    assert restart_sec("[Service]\nRestart=on-abort\nRestartSec=2\n", unit="e") == 2.0


def test_the_delays_come_from_the_shipped_units() -> None:
    assert restart_sec(OUR_UNIT.read_text(), unit="ours") == 0.5
    if not OPENVPN_UNIT.exists():
        pytest.skip(f"{OPENVPN_UNIT} absent: the openvpn package is not installed")
    assert restart_sec(OPENVPN_UNIT.read_text(), unit="openvpn@") == 5.0
