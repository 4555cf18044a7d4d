"""The blocked-traffic report: packet decoding, the ledger (counts, names, rate-limited log
lines), the counters' parsing and deltas, the queue reader's verdicts, the mode choice."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from typing import Any

import pytest

from qubes_miragevpn.gateway import blocked, ruleset
from qubes_miragevpn.gateway.blocked import Flow, Ledger, decode_flow
from qubes_miragevpn.gateway.policy import Report as PolicyReport

ip = ipaddress.ip_address
WORK = ip("10.137.0.12")
TARGET = ip("203.0.113.7")


def ipv4(protocol: int, dport: int, *, fragment: int = 0, ihl: int = 5) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 40, 1, fragment, 64, protocol, 0,
        WORK.packed, TARGET.packed,
    )  # fmt: skip
    return header + b"\0" * (ihl * 4 - 20) + struct.pack("!HH", 40000, dport) + b"\0" * 16


def ipv6(next_header: int, dport: int) -> bytes:
    source, destination = ip("fd09:24ef:4179::a89:c"), ip("2001:db8::7")
    header = struct.pack("!IHBB", 6 << 28, 20, next_header, 64)
    return header + source.packed + destination.packed + struct.pack("!HH", 40000, dport)


def test_decode_ipv4_tcp_and_udp_with_and_without_options() -> None:
    assert decode_flow(ipv4(6, 443)) == Flow(WORK, "tcp", TARGET, 443)
    assert decode_flow(ipv4(17, 53)) == Flow(WORK, "udp", TARGET, 53)
    assert decode_flow(ipv4(6, 8080, ihl=7)) == Flow(WORK, "tcp", TARGET, 8080)


def test_decode_ipv6_udp() -> None:
    flow = decode_flow(ipv6(17, 53))
    assert flow == Flow(ip("fd09:24ef:4179::a89:c"), "udp", ip("2001:db8::7"), 53)
    assert flow.target == "[2001:db8::7]:53"


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        ipv4(6, 443)[:22],  # no room for the ports
        ipv4(1, 0),  # ICMP
        ipv4(6, 443, fragment=0x0010),  # a later fragment: no ports in it
        ipv4(6, 443, ihl=4),  # a header length below 20
        ipv6(0, 443),  # an extension header first (hop-by-hop)
        b"\x70" + b"\0" * 60,  # IP version 7
    ],
)
def test_decode_refuses_what_it_cannot_read(packet: bytes) -> None:
    assert decode_flow(packet) is None


def test_ledger_counts_per_appvm_and_destination_most_recent_first() -> None:
    ledger = Ledger(names=lambda: {WORK: "work-vm"})
    https = Flow(WORK, "tcp", TARGET, 443)
    dns = Flow(ip("10.137.0.13"), "udp", TARGET, 53)
    ledger.record(https, now=1000.0)
    ledger.record(https, now=1001.0, packets=2)
    ledger.record(dns, now=1002.0)
    assert ledger.entries() == (
        {
            "source": {"address": "10.137.0.13", "name": None},
            "destination": {"proto": "udp", "address": "203.0.113.7", "port": 53},
            "packets": 1,
            "first_seen": "1970-01-01T00:16:42+00:00",
            "last_seen": "1970-01-01T00:16:42+00:00",
        },
        {
            "source": {"address": "10.137.0.12", "name": "work-vm"},
            "destination": {"proto": "tcp", "address": "203.0.113.7", "port": 443},
            "packets": 3,
            "first_seen": "1970-01-01T00:16:40+00:00",
            "last_seen": "1970-01-01T00:16:41+00:00",
        },
    )


def test_ledger_orders_ipv4_and_ipv6_together() -> None:
    ledger = Ledger()
    v6 = Flow(ip("fd09::c"), "tcp", ip("2001:db8::7"), 443)
    v4 = Flow(WORK, "tcp", TARGET, 443)
    for flow in (v6, v4):
        ledger.record(flow, now=5.0)  # same time: the order falls to the flows themselves
    assert [e["source"]["address"] for e in ledger.entries()] == ["10.137.0.12", "fd09::c"]


def test_ledger_is_bounded_forgetting_the_least_recent() -> None:
    ledger = Ledger(max_entries=3)
    for port in range(1, 6):
        ledger.record(Flow(WORK, "tcp", TARGET, port), now=float(port))
    assert [e["destination"]["port"] for e in ledger.entries()] == [5, 4, 3]


def test_log_line_names_the_appvm_and_says_the_tunnel_was_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"now": "blocked"}
    ledger = Ledger(names=lambda: {WORK: "work-vm"}, state=lambda: state["now"])
    with caplog.at_level(logging.WARNING, "qubes-miragevpn"):
        ledger.record(Flow(WORK, "tcp", TARGET, 443), now=0.0)
        state["now"] = "connected"
        ledger.record(Flow(ip("10.137.0.13"), "udp", ip("2001:db8::7"), 53), now=1.0)
    assert caplog.messages == [
        "work-vm tried to reach 203.0.113.7:443 (tcp) while the tunnel was down",
        "AppVM 10.137.0.13 tried to reach [2001:db8::7]:53 (udp) outside the tunnel",
    ]


def test_log_lines_are_rate_limited_and_say_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    with caplog.at_level(logging.WARNING, "qubes-miragevpn"):
        for second in range(10):  # the same flow again and again: one line
            ledger.record(Flow(WORK, "tcp", TARGET, 443), now=float(second))
        assert len(caplog.messages) == 1
        for port in range(1, 20):  # 19 new destinations within a minute: 4 more lines
            ledger.record(Flow(WORK, "tcp", TARGET, port), now=20.0 + port)
        assert len(caplog.messages) == blocked.LOG_BURST
        ledger.record(Flow(WORK, "tcp", TARGET, 9999), now=200.0)  # a new minute
    assert len(caplog.messages) == blocked.LOG_BURST + 1
    assert caplog.messages[-1].endswith("(15 more refused flows not logged)")
    assert sum(e["packets"] for e in ledger.entries()) == 10 + 19 + 1  # all counted


# --- counters -------------------------------------------------------------------------------

# `nft -j list set inet qubes-miragevpn blocked-ipv4` as nftables 1.0.6 prints it
LISTED = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {
            "set": {
                "family": "inet",
                "name": "blocked-ipv4",
                "table": "qubes-miragevpn",
                "type": ["ipv4_addr", "inet_proto", "ipv4_addr", "inet_service"],
                "flags": ["timeout"],
                "elem": [
                    {
                        "elem": {
                            "val": {"concat": ["10.137.0.12", "tcp", "203.0.113.7", 443]},
                            "expires": 3599,
                            "counter": {"packets": 3, "bytes": 180},
                        }
                    },
                    {"elem": {"val": {"concat": ["garbage"]}}},
                ],
            }
        },
    ]
}


def test_parse_counted_reads_nft_elements_and_skips_what_it_cannot() -> None:
    assert blocked.parse_counted(LISTED) == {Flow(WORK, "tcp", TARGET, 443): 3}
    assert blocked.parse_counted(None) == {}


class FakeBackend:
    def __init__(self) -> None:
        self.packets: int | None = 3
        self.asked: list[str] = []

    def run(self, document: Any) -> Any:
        name = document["nftables"][0]["list"]["set"]["name"]
        self.asked.append(name)
        if name != ruleset.SET_BLOCKED4 or self.packets is None:
            raise RuntimeError("No such file or directory")
        listed = LISTED["nftables"][1]["set"]["elem"][0]["elem"]  # type: ignore[index]
        listed["counter"]["packets"] = self.packets
        return LISTED


def test_counter_reader_feeds_differences_and_counts_anew_after_a_table_change() -> None:
    backend, ledger = FakeBackend(), Ledger()
    reader = blocked.CounterReader(backend, ledger)
    reader.poll()
    assert backend.asked == [ruleset.SET_BLOCKED4, ruleset.SET_BLOCKED6]
    backend.packets = 5
    reader.poll()
    assert ledger.entries()[0]["packets"] == 5
    backend.packets = 2  # the table was replaced: its counters started again
    reader.poll()
    assert ledger.entries()[0]["packets"] == 7
    backend.packets = None  # gone for a moment: nothing counted, nothing raised
    reader.poll()
    assert ledger.entries()[0]["packets"] == 7


# --- the queue ------------------------------------------------------------------------------


class FakePacket:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def drop(self) -> None:
        self.verdicts.append("drop")

    def accept(self) -> None:  # pragma: no cover - must never be called
        self.verdicts.append("accept")


def test_queue_reader_drops_every_packet_and_records_the_readable_ones() -> None:
    ledger = Ledger()
    reader = blocked.QueueReader(7, ledger, module=object())
    packets = [FakePacket(ipv4(6, 443)), FakePacket(b"junk"), FakePacket(ipv4(1, 0))]
    for packet in packets:
        reader._verdict(packet)
    assert [p.verdicts for p in packets] == [["drop"], ["drop"], ["drop"]]
    assert reader.seen == 3
    assert [e["destination"]["port"] for e in ledger.entries()] == [443]


def test_queue_reader_drops_even_when_recording_fails() -> None:
    def broken() -> dict[Any, str]:
        raise RuntimeError("names unavailable")

    reader = blocked.QueueReader(7, Ledger(names=broken), module=object())
    packet = FakePacket(ipv4(6, 443))
    with pytest.raises(RuntimeError):
        reader._verdict(packet)
    assert packet.verdicts == ["drop"]


# --- the mode -------------------------------------------------------------------------------


def test_choose_mode() -> None:
    choose = blocked.choose_mode
    assert choose("auto", module_problem=None, kernel_has_queue=True) == "queue"
    assert choose("auto", module_problem=None, kernel_has_queue=False) == "counters"
    assert choose("auto", module_problem="not installed", kernel_has_queue=True) == "counters"
    assert choose("counters", module_problem=None, kernel_has_queue=True) == "counters"
    assert choose("off", module_problem=None, kernel_has_queue=True) == "off"
    with pytest.raises(RuntimeError, match="CONFIG_NFT_QUEUE"):
        choose("queue", module_problem=None, kernel_has_queue=False)


def test_reporter_reads_the_counters_before_the_table_is_replaced() -> None:
    """A policy change empties the counting sets: what they held is read just before."""

    async def scenario() -> list[dict[str, Any]]:
        backend, ledger = FakeBackend(), Ledger()
        reporter = blocked.Reporter("counters", ledger, backend)
        reporter.start(asyncio.get_running_loop())
        await asyncio.sleep(0)  # the poller's first read
        backend.packets = 9
        reporter.before_replacing()
        backend.packets = None  # the new table: nothing there yet
        await reporter.close()
        return list(ledger.entries())

    (entry,) = asyncio.run(scenario())
    assert entry["packets"] == 9


def test_reporter_without_the_queue_counts_and_says_so() -> None:
    class Unbindable:
        class NetfilterQueue:
            def bind(self, *args: Any, **kwargs: Any) -> None:
                raise OSError("Failed to create queue 28022.")

    async def scenario() -> str:
        reporter = blocked.Reporter("queue", Ledger(), FakeBackend())
        reporter._queue_module = Unbindable
        reporter.start(asyncio.get_running_loop())
        await reporter.close()
        return reporter.mode

    assert asyncio.run(scenario()) == "counters"
    assert blocked.Reporter("counters", Ledger(), FakeBackend()).report == PolicyReport(queue=None)
    assert blocked.Reporter("off", Ledger(), FakeBackend()).report is None
