"""The blocked-traffic report: which AppVM tried to reach what while the firewall refused it.

The firewall (docs/security.md, "The blocked-traffic report") hands the daemon refused flows in
one of two ways; this module is both readers and the accounting they feed:

    decode_flow(packet)   pure: (source, protocol, destination, port) of an IPv4/IPv6 TCP/UDP
                          packet, or None
    Ledger                pure: counts per AppVM and destination (bounded), the `status`
                          entries, and the rate-limited log lines ("work-vm tried to reach
                          203.0.113.7:443 while the tunnel was down")
    QueueReader           the NFQUEUE (`netfilterqueue`): every packet is read and dropped;
                          the verdict is always drop
    CounterReader         no queue: lists the firewall's counting sets through nftables and
                          turns their counters into ledger entries
    choose_mode(...)      queue / counters / off, from `--blocked-report` and what the
                          machine has

The packet decoding is written here (about twenty lines of header offsets) rather than taken
from a packet library: only the addresses, the protocol and the destination port are needed,
and scapy/dpkt would be a large dependency for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from . import nft, ruleset
from .policy import IPAddress
from .policy import Report as PolicyReport

log = logging.getLogger("qubes-miragevpn")

Mode = Literal["queue", "counters", "off"]
MAX_ENTRIES = 256  # (AppVM, destination) pairs kept; the oldest seen goes first
LOG_WINDOW = 60.0  # seconds
LOG_BURST = 5  # report lines per LOG_WINDOW at most
LOG_SAME = 300.0  # seconds before the same AppVM and destination is logged again
COPY_BYTES = 128  # bytes of each queued packet copied to us: enough for the headers
POLL_SECONDS = 3.0  # how often the counters are read to log new entries

_TCP, _UDP = 6, 17
_PROTOCOLS = {_TCP: "tcp", _UDP: "udp"}
_PORT = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Flow:
    """What an AppVM tried to reach: its address, the protocol, the destination and port."""

    source: IPAddress
    proto: str  # "tcp" or "udp"
    destination: IPAddress
    port: int

    @property
    def order(self) -> tuple[int, int, str, int, int, int]:
        """A sort key (IPv4 and IPv6 addresses do not compare with each other)."""
        s, d = self.source, self.destination
        return (s.version, int(s), self.proto, d.version, int(d), self.port)

    @property
    def target(self) -> str:
        host = f"[{self.destination}]" if self.destination.version == 6 else str(self.destination)
        return f"{host}:{self.port}"


def decode_flow(packet: bytes) -> Flow | None:
    """The flow of an IP packet as the queue hands it over (from the IP header on), or None
    when it is not a TCP/UDP packet we can read (fragment, IPv6 extension header, short)."""
    if not packet:
        return None
    version = packet[0] >> 4
    source: IPAddress
    destination: IPAddress
    if version == 4 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        if header < 20 or _PORT.unpack(packet[6:8])[0] & 0x1FFF:
            return None  # a bad header length, or a later fragment (no ports in it)
        protocol = packet[9]
        source = ipaddress.IPv4Address(packet[12:16])
        destination = ipaddress.IPv4Address(packet[16:20])
    elif version == 6 and len(packet) >= 40:
        header, protocol = 40, packet[6]  # next header: only TCP/UDP right after the header
        source = ipaddress.IPv6Address(packet[8:24])
        destination = ipaddress.IPv6Address(packet[24:40])
    else:
        return None
    name = _PROTOCOLS.get(protocol)
    if name is None or len(packet) < header + 4:
        return None
    (port,) = _PORT.unpack(packet[header + 2 : header + 4])
    return Flow(source, name, destination, port)


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


@dataclass(slots=True)
class _Entry:
    packets: int
    first_seen: float
    last_seen: float


@dataclass(slots=True)
class Ledger:
    """Refused flows per AppVM and destination; `names` maps AppVM addresses to qube names
    (None or missing: the address stands alone). `state()` tells what the tunnel is doing
    ("down" while blocked or connecting), for the log line."""

    names: Callable[[], Mapping[IPAddress, str]] = dict
    state: Callable[[], str] = lambda: "blocked"
    max_entries: int = MAX_ENTRIES
    _entries: dict[Flow, _Entry] = field(default_factory=dict)
    _logged: dict[Flow, float] = field(default_factory=dict)
    _window: list[float] = field(default_factory=list)
    _unlogged: int = 0

    def record(self, flow: Flow, *, now: float, packets: int = 1) -> None:
        """`packets` more refused packets of `flow` seen at wall-clock `now`."""
        if packets <= 0:
            return
        entry = self._entries.get(flow)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                oldest = min(self._entries, key=lambda f: self._entries[f].last_seen)
                del self._entries[oldest]
            self._entries[flow] = _Entry(packets, now, now)
        else:
            entry.packets += packets
            entry.last_seen = now
        self._log(flow, now)

    def name_of(self, address: IPAddress) -> str | None:
        return self.names().get(address)

    def line(self, flow: Flow) -> str:
        """The log line of one refused flow, in words."""
        who = self.name_of(flow.source) or f"AppVM {flow.source}"
        state = self.state()
        why = "while the tunnel was down" if state != "connected" else "outside the tunnel"
        return f"{who} tried to reach {flow.target} ({flow.proto}) {why}"

    def _log(self, flow: Flow, now: float) -> None:
        last = self._logged.get(flow)
        if last is not None and now - last < LOG_SAME:
            return
        self._window = [t for t in self._window if now - t < LOG_WINDOW]
        if len(self._window) >= LOG_BURST:
            self._unlogged += 1
            return
        self._window.append(now)
        self._logged[flow] = now
        if len(self._logged) > 4 * self.max_entries:  # forget the oldest
            for old in sorted(self._logged, key=self._logged.__getitem__)[: self.max_entries]:
                del self._logged[old]
        more = f" ({self._unlogged} more refused flows not logged)" if self._unlogged else ""
        self._unlogged = 0
        log.warning("%s%s", self.line(flow), more)

    def entries(self) -> tuple[dict[str, Any], ...]:
        """The `blocked_traffic` entries of `status` (docs/status.md), most recent first."""
        names = self.names()
        ordered = sorted(self._entries.items(), key=lambda i: (-i[1].last_seen, i[0].order))
        return tuple(
            {
                "source": {"address": str(f.source), "name": names.get(f.source)},
                "destination": {"proto": f.proto, "address": str(f.destination), "port": f.port},
                "packets": e.packets,
                "first_seen": _iso(e.first_seen),
                "last_seen": _iso(e.last_seen),
            }
            for f, e in ordered
        )


# --------------------------------------------------------------------------- the queue


class QueueReader:
    """Reads NFQUEUE `queue` with `netfilterqueue`, on the event loop: each packet's flow goes
    to the ledger and the packet is dropped. No other verdict exists here."""

    def __init__(self, queue: int, ledger: Ledger, *, module: Any = None) -> None:
        if module is None:
            import netfilterqueue as module
        self._module = module
        self._queue = queue
        self._ledger = ledger
        self._nfq: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.seen = 0  # packets read (and dropped)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the queue (raises OSError when another process holds it, or not root)."""
        nfq = self._module.NetfilterQueue()
        nfq.bind(self._queue, self._verdict, max_len=1024, range=COPY_BYTES)
        self._nfq, self._loop = nfq, loop
        loop.add_reader(nfq.get_fd(), self._readable)
        log.info("blocked-traffic report: reading NFQUEUE %d (every packet dropped)", self._queue)

    def _readable(self) -> None:
        if self._nfq is not None:
            with contextlib.suppress(OSError):  # ENOBUFS: the kernel dropped some; go on
                self._nfq.run(block=False)

    def _verdict(self, packet: Any) -> None:
        try:
            flow = decode_flow(packet.get_payload())
            self.seen += 1
            if flow is not None:
                self._ledger.record(flow, now=time.time())
        finally:
            packet.drop()

    def close(self) -> None:
        if self._nfq is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._nfq.get_fd())
        with contextlib.suppress(Exception):
            self._nfq.unbind()
        self._nfq = None


# --------------------------------------------------------------------------- counters


class SetLister(Protocol):
    """Runs one libnftables JSON document (`gateway.nft.NftBackend`)."""

    def run(self, document: Any) -> Any: ...


def parse_counted(output: Any) -> dict[Flow, int]:
    """(flow -> packets) from `nft -j list set` output of a counting set."""
    found: dict[Flow, int] = {}
    objects = output.get("nftables", []) if isinstance(output, dict) else []
    for obj in objects:
        for element in obj.get("set", {}).get("elem", ()) if isinstance(obj, dict) else ():
            body = element.get("elem", {}) if isinstance(element, dict) else {}
            value = body.get("val", {}).get("concat") if isinstance(body, dict) else None
            counter = body.get("counter", {}) if isinstance(body, dict) else {}
            try:
                source, proto, destination, port = value  # type: ignore[misc]
                flow = Flow(
                    ipaddress.ip_address(source),
                    str(proto),
                    ipaddress.ip_address(destination),
                    int(port),
                )
                found[flow] = int(counter.get("packets", 0))
            except (TypeError, ValueError):
                continue
    return found


class CounterReader:
    """Reads the firewall's counting sets and feeds the differences to the ledger. A count
    lower than last time means the table was replaced (a policy change): it counts anew."""

    def __init__(self, backend: SetLister, ledger: Ledger) -> None:
        self._backend = backend
        self._ledger = ledger
        self._last: dict[Flow, int] = {}

    def poll(self) -> None:
        counted: dict[Flow, int] = {}
        for name in (ruleset.SET_BLOCKED4, ruleset.SET_BLOCKED6):
            try:
                counted.update(parse_counted(self._backend.run(nft.list_set_document(name))))
            except Exception as e:  # the table is being replaced, or gone: next time
                log.debug("cannot list set %s: %s", name, e)
        now = time.time()
        for flow, packets in sorted(counted.items(), key=lambda item: item[0].order):
            before = self._last.get(flow, 0)
            self._ledger.record(flow, now=now, packets=packets - before if packets >= before
                                else packets)  # fmt: skip
        self._last = counted

    async def run(self, interval: float = POLL_SECONDS) -> None:
        """Poll forever. On the event loop's thread, as every other read (status, before a
        table replacement), so the counts are never read twice at once; one listing is a
        few milliseconds."""
        while True:
            self.poll()
            await asyncio.sleep(interval)


# --------------------------------------------------------------------------- which one


def queue_module_missing() -> str | None:
    """Why `netfilterqueue` cannot be used, or None."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as e:
        return f"the netfilterqueue module is not installed ({e})"
    return None


def choose_mode(asked: str, *, module_problem: str | None, kernel_has_queue: bool) -> Mode:
    """`--blocked-report` and the machine -> the mode; `auto` falls back to counters (logged)."""
    if asked == "off":
        return "off"
    if asked == "counters":
        return "counters"
    problem = module_problem
    if problem is None and not kernel_has_queue:
        problem = "the kernel has no nftables queue expression (CONFIG_NFT_QUEUE)"
    if problem is None:
        return "queue"
    if asked == "queue":
        raise RuntimeError(f"--blocked-report queue: {problem}")
    log.info("blocked-traffic report: counting in nftables, no queue: %s", problem)
    return "counters"


class Reporter:
    """The report as the daemon runs it: the mode in force, its reader, the ledger.

    `start()` binds the queue (mode queue) or starts polling the counters (mode counters); when
    the queue cannot be bound it counts instead, before any firewall names the queue. `report`
    is what the firewall facts carry (None: no report rules)."""

    def __init__(self, mode: Mode, ledger: Ledger, backend: SetLister) -> None:
        self.mode: Mode = mode
        self.ledger = ledger
        self._backend = backend
        self._queue: QueueReader | None = None
        self._counters: CounterReader | None = None
        self._poller: asyncio.Future[None] | None = None
        self._queue_module: Any = None  # netfilterqueue (tests give a stand-in)

    @property
    def report(self) -> PolicyReport | None:
        if self.mode == "off":
            return None
        return PolicyReport() if self.mode == "queue" else PolicyReport(queue=None)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.mode == "queue":
            queue = PolicyReport().queue
            assert queue is not None
            reader = QueueReader(queue, self.ledger, module=self._queue_module)
            try:
                reader.start(loop)
            except (OSError, RuntimeError) as e:  # netfilterqueue raises OSError on bind
                log.warning("blocked-traffic report: no NFQUEUE %d (%s); counting", queue, e)
                self.mode = "counters"
            else:
                self._queue = reader
                return
        if self.mode == "counters":
            self._counters = CounterReader(self._backend, self.ledger)
            self._poller = asyncio.ensure_future(self._counters.run())
            log.info("blocked-traffic report: counting refused flows in nftables")

    def before_replacing(self) -> None:
        """The firewall table is about to be replaced, and the counting sets with it: read
        them now, or what they counted since the last poll would be lost."""
        if self._counters is not None:
            try:
                self._counters.poll()
            except Exception as e:  # never in the firewall's way
                log.warning("blocked-traffic report: cannot read the counters: %s", e)

    def entries(self) -> tuple[dict[str, Any], ...]:
        if self._counters is not None:
            self._counters.poll()  # the latest counts for this status
        return self.ledger.entries()

    async def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
