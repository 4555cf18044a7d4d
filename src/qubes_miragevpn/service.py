"""The one run loop: engine + transport + tun + timer + signals, on asyncio.

The engine (`miragevpn.client.Client`) does no IO; this loop does all of it:

    events      client.next_event() until None, each acted on (`_handle`, exhaustive match)
    wire out    client.data_to_send(now) → transport, after every call (or batch) into the client
    wire in     a batch of datagrams (up to transport.RECV_BATCH, or one TCP chunk) →
                client.receive() each → client.tunnel_packets() → tun, one os.write per packet
    tun in      up to TUN_BATCH packets per wake-up → client.encrypt_tunnel_packet() each → one
                transport.send(batch) (UDP GSO when the kernel has it)
    timer       exactly one asyncio timer for client.get_timer(), moved only when the deadline
                comes earlier than the armed one (a later deadline is left to an early wake-up,
                which costs one no-op handle_timer, instead of a cancel + call_later per batch)
    signals     SIGTERM/SIGINT → client.close(now) (explicit-exit-notify), bounded wait for
                SessionEnded; a second signal stops at once; SIGUSR1 (and OpenVPN's SIGUSR2)
                → one statistics line (`describe_stats`), which is also logged at exit

The tun device is opened on the first `TunnelEstablished` and kept through reconnects (packets
for the tunnel are dropped while it is down instead of leaking elsewhere); the network changes
are undone when the loop ends, whatever the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, assert_never

from miragevpn.client import Client
from miragevpn.config.model import AddressFamily, AuthUserPass, Config, Transport
from miragevpn.events import (
    ConnectionRequested,
    ControlMessageReceived,
    DisconnectionRequested,
    Event,
    ProgressReported,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TlsEstablished,
    TunnelEstablished,
    TunnelSettings,
)

from . import transport as transports
from .netlink import NetworkConfigurator, TunDevice
from .sdnotify import sd_notify

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TUN_BATCH = 64  # packets read from the tun per wake-up, so the wire side is never starved
CLOSE_TIMEOUT = 5.0  # seconds to wait for SessionEnded after close() (explicit-exit-notify)
STATS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # log one statistics line (SIGUSR2: OpenVPN's)

# The engine counts a dropped packet under a plain reason ("unknown key id") or, for a packet
# that failed to decode, the error's class name (errors.py); the log says the latter in words.
DROP_REASON_WORDS = {
    "DecodeError": "malformed",
    "AuthenticationError": "failed authentication",
    "ReplayError": "replayed",
}


class ExitCode(enum.IntEnum):
    """What `miragevpn-client` returns."""

    OK = 0  # stopped on request (SIGTERM/SIGINT), session closed in order
    CONFIG = 1  # the configuration cannot be used
    USAGE = 2  # bad command line (argparse)
    SESSION_FAILED = 3  # the session ended on an error: auth failed, server HALT, retries over
    SETUP_FAILED = 4  # local set-up failed: tun device, routes (not root? no /dev/net/tun?)


class EngineClient(Protocol):
    """The engine's public surface, as documented in docs/ARCHITECTURE.md."""

    def receive(self, data: bytes, now: float) -> None: ...
    def data_to_send(self, now: float) -> list[bytes]: ...
    def encrypt_tunnel_packet(self, ip_packet: bytes, now: float) -> bytes | None: ...
    def tunnel_packets(self) -> list[bytes]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Event | None: ...
    def handle_resolved(self, addresses: Sequence[IPAddress], now: float) -> None: ...
    def handle_resolve_failed(self, now: float) -> None: ...
    def handle_connected(self, now: float) -> None: ...
    def handle_connection_failed(self, now: float) -> None: ...
    def handle_connection_lost(self, now: float) -> None: ...
    def close(self, now: float) -> None: ...


ClientFactory = Callable[[Config, float], EngineClient]
Notify = Callable[[str], object]


@dataclass(frozen=True)
class Outcome:
    exit_code: ExitCode
    reason: str


def _families(family: AddressFamily) -> int:
    return {
        AddressFamily.ANY: socket.AF_UNSPEC,
        AddressFamily.IPV4: socket.AF_INET,
        AddressFamily.IPV6: socket.AF_INET6,
    }[family]


def describe_settings(ifname: str, s: TunnelSettings) -> str:
    """One line a person can read: what the tunnel looks like."""
    parts = [f"{ifname}"]
    if s.ipv4 is not None:
        parts.append(f"{s.ipv4}" + (f" peer {s.ipv4_peer}" if s.ipv4_peer else ""))
    if s.ipv6 is not None:
        parts.append(str(s.ipv6))
    parts.append(f"mtu {s.mtu}")
    parts.append(f"cipher {s.cipher} ({s.key_derivation})")
    if s.routes:
        parts.append("routes " + ", ".join(str(r.network) for r in s.routes))
    if s.redirect_gateway_ipv4 or s.redirect_gateway_ipv6:
        parts.append("all traffic through the tunnel")
    if s.dhcp_options:
        parts.append(
            "dhcp " + ", ".join(f"{o.kind} {o.value or ''}".strip() for o in s.dhcp_options)
        )
    return ", ".join(parts)


def describe_stats(stats: object) -> str:
    """One line a person can read: the counters of the engine's `client.stats`.

    Read by name and defensively (a counter the engine does not have is left out), so the
    runtime keeps working while the engine's `Stats` grows or moves. No addresses, no keys."""

    def count(name: str) -> int | None:
        value = getattr(stats, name, None)
        return value if isinstance(value, int) else None

    parts: list[str] = []
    for direction, packets, size in (
        ("in", "packets_received", "bytes_received"),
        ("out", "packets_sent", "bytes_sent"),
    ):
        n, b = count(packets), count(size)
        if n is not None:
            parts.append(f"{direction} {n} packets" + (f" ({b} bytes)" if b is not None else ""))
    tunnel_in, tunnel_out = count("tunnel_packets_in"), count("tunnel_packets_out")
    if tunnel_in is not None and tunnel_out is not None:
        parts.append(f"tunnel packets in {tunnel_in} out {tunnel_out}")
    dropped = getattr(stats, "dropped", None)
    if isinstance(dropped, Mapping):
        reasons = sorted(
            (DROP_REASON_WORDS.get(str(reason), str(reason)), int(n))
            for reason, n in dropped.items()
            if n
        )
        total = sum(n for _, n in reasons)
        detail = ", ".join(f"{reason} {n}" for reason, n in reasons)
        parts.append(f"dropped {total}" + (f" ({detail})" if detail else ""))
    return "statistics: " + (", ".join(parts) if parts else "not available")


def describe_udp_stats(stats: transports.UdpStats) -> str:
    """One line for the UDP socket's counters (not "statistics:": that line is the engine's)."""
    batches = stats.receive_batches or 1
    return (
        f"UDP socket: received {stats.received} in {stats.receive_batches} wake-ups "
        f"({stats.received / batches:.1f} per wake-up), sent {stats.sent} "
        f"({stats.gso_sends} GSO sendmsg), errors {stats.receive_errors} in "
        f"{stats.send_errors} out, waited for the socket {stats.queued}, "
        f"dropped on a full queue {stats.queue_dropped}"
    )


class Service:
    """Runs one client session until it ends; `run()` returns the outcome."""

    def __init__(
        self,
        config: Config,
        *,
        client_factory: ClientFactory,
        network: NetworkConfigurator,
        tun_name: str,
        notify: Notify = sd_notify,
        clock: Callable[[], float] = time.time,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self._config = config
        self._client_factory = client_factory
        self._network = network
        self._tun_name = tun_name
        self._notify = notify
        self._clock = clock
        self._close_timeout = close_timeout

        self._client: EngineClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: transports.Transport | None = None
        self._generation = 0  # bumped on every connect/disconnect: stale callbacks are ignored
        self._tun: TunDevice | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0  # the client deadline `_timer` was armed for
        self._udp_stats: transports.UdpStats | None = None  # of the current (or last) UDP socket
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[Outcome] | None = None
        self._closing = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ entry points

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._teardown)
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.stop, signum)
                    cleanup.callback(loop.remove_signal_handler, signum)
            for signum in STATS_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self.log_stats)
                    cleanup.callback(loop.remove_signal_handler, signum)
            self._client = self._client_factory(self._config, self._clock())
            cleanup.callback(self.log_stats)  # the same line at exit, whatever the reason
            self._notify("STATUS=starting")
            self._pump()
            outcome = await self._done
            if self._failure is not None:
                raise self._failure
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, signum: int | None = None) -> None:
        """Close the session in order (explicit-exit-notify); a second call stops at once."""
        name = signal.Signals(signum).name if signum is not None else "stop request"
        if self._closing:
            log.warning("%s again: stopping now", name)
            self._finish(Outcome(ExitCode.OK, f"{name} (forced)"))
            return
        self._closing = True
        log.info("%s: closing the session", name)
        self._notify("STOPPING=1")
        assert self._loop is not None
        self._loop.call_later(
            self._close_timeout,
            self._finish,
            Outcome(ExitCode.OK, f"{name}; the server did not confirm within the close timeout"),
        )
        self._call(lambda c, now: c.close(now))

    def log_stats(self) -> None:
        """Log the client's counters in one line (SIGUSR1, SIGUSR2, and at exit), and those of
        the current (or last) UDP socket on a second line."""
        if self._client is not None:
            log.info("%s", describe_stats(getattr(self._client, "stats", None)))
        if self._udp_stats is not None:
            log.info("%s", describe_udp_stats(self._udp_stats))

    # ------------------------------------------------------------------ the pump

    def _call(self, action: Callable[[EngineClient, float], object]) -> None:
        """Call into the client, then act on everything it produced."""
        if self._client is None or self._finished:
            return
        try:
            action(self._client, self._clock())
        except Exception as e:
            self._fail(e)
            return
        self._pump()

    @property
    def _finished(self) -> bool:
        return self._done is None or self._done.done()

    def _pump(self) -> None:
        client = self._client
        assert client is not None
        try:
            for _ in range(10_000):  # bounded: an engine emitting events forever is a bug
                event = client.next_event()
                if event is None:
                    break
                self._handle(event)
                if self._finished:
                    return
            self._flush()
            self._arm_timer()
        except Exception as e:
            self._fail(e)

    def _flush(self) -> None:
        assert self._client is not None
        wire = self._client.data_to_send(self._clock())
        if not wire:
            return
        if self._transport is not None:
            self._transport.send(wire)
        else:
            log.debug("dropping %d packets: no transport open", len(wire))

    def _arm_timer(self) -> None:
        """Keep one timer at or before `client.get_timer()`.

        The deadline moves on almost every packet (keepalive: last sent + ping), nearly always
        later; a timer that fires before it is harmless (`handle_timer` checks each deadline
        and does nothing early), so only an earlier deadline moves the armed timer."""
        assert self._client is not None and self._loop is not None
        deadline = self._client.get_timer()
        if deadline is None or (self._timer is not None and self._timer_deadline <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._call(lambda c, now: c.handle_timer(now))

    # ------------------------------------------------------------------ events

    def _handle(self, event: Event) -> None:
        match event:
            case ResolutionRequested(host=host, family=family):
                log.info("resolving %s", host)
                self._spawn(self._resolve(host, family))
            case ConnectionRequested(address=address, port=port, transport=kind):
                self._close_transport()
                log.info("connecting to %s port %d over %s", address, port, kind.value.upper())
                self._spawn(self._connect(address, port, kind, self._generation))
            case DisconnectionRequested(reason=reason):
                log.info("disconnecting: %s", reason)
                self._close_transport()
            case ProgressReported(message=message):
                log.info("%s", message)
                self._notify(f"STATUS={message}")
            case TlsEstablished(version=version, cipher=cipher, peer_subject=subject):
                log.info("TLS established: %s %s with %s", version, cipher, subject)
            case TunnelEstablished(settings=settings):
                self._tunnel_up(settings)
            case ControlMessageReceived(message=message):
                log.info("server says: %s", message)
            case SessionRestarting(reason=reason, retry_in=retry_in):
                log.warning("session lost (%s); reconnecting in %.1fs", reason, retry_in)
                self._notify(f"STATUS=reconnecting: {reason}")
            case SessionEnded(reason=reason, error=error):
                self._close_transport()
                if error is None:
                    log.info("session ended: %s", reason)
                    self._finish(Outcome(ExitCode.OK, reason))
                else:
                    detail = reason if str(error) in reason else f"{reason} ({error})"
                    log.error("session ended: %s", detail)
                    self._finish(Outcome(ExitCode.SESSION_FAILED, detail))
            case _:
                assert_never(event)

    def _tunnel_up(self, settings: TunnelSettings) -> None:
        assert self._loop is not None
        try:
            if self._tun is None:
                self._tun = self._network.open_tun(self._tun_name)
                self._loop.add_reader(self._tun.fileno(), self._on_tun_readable)
            self._network.apply(self._tun.name, settings)
        except Exception as e:  # OSError, NetlinkError: not root, no /dev/net/tun, ...
            log.error("cannot configure the tunnel device: %s", e)
            self._finish(Outcome(ExitCode.SETUP_FAILED, f"cannot configure the tunnel: {e}"))
            return
        summary = describe_settings(self._tun.name, settings)
        log.info("tunnel up: %s", summary)
        self._notify(f"READY=1\nSTATUS=connected: {summary}")

    # ------------------------------------------------------------------ IO callbacks

    async def _resolve(self, host: str, family: AddressFamily) -> None:
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(
                host, None, family=_families(family), type=socket.SOCK_DGRAM
            )
        except (OSError, UnicodeError) as e:
            log.warning("cannot resolve %s: %s", host, e)
            self._call(lambda c, now: c.handle_resolve_failed(now))
            return
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
        log.info("%s is %s", host, ", ".join(map(str, addresses)))
        self._call(lambda c, now: c.handle_resolved(addresses, now))

    async def _connect(
        self, address: IPAddress, port: int, kind: Transport, generation: int
    ) -> None:
        def on_data(batch: list[bytes]) -> None:
            if generation == self._generation:
                self._on_wire_data(batch)

        def on_lost(exc: Exception | None) -> None:
            if generation == self._generation and self._transport is not None:
                log.warning("connection to the server lost: %s", exc or "closed by the server")
                self._transport = None
                self._call(lambda c, now: c.handle_connection_lost(now))

        opened: transports.Transport
        try:
            if kind is Transport.UDP:
                opened = await transports.open_udp(address, port, on_data, on_lost)
            else:
                timeout = min(self._config.connect_timeout, 120.0)
                opened = await transports.open_tcp(address, port, on_data, on_lost, timeout=timeout)
        except (OSError, TimeoutError) as e:
            log.warning("cannot connect to %s port %d: %s", address, port, e or "timed out")
            if generation == self._generation:
                self._call(lambda c, now: c.handle_connection_failed(now))
            return
        if generation != self._generation or self._finished:
            opened.close()
            return
        self._transport = opened
        if isinstance(opened, transports.UdpTransport):
            self._udp_stats = opened.stats
        log.info("connected to %s port %d", address, port)
        self._call(lambda c, now: c.handle_connected(now))

    def _on_wire_data(self, batch: list[bytes]) -> None:
        """A batch from the transport: all into the client, its packets to the tun, one pump."""
        client = self._client
        if client is None or self._finished:
            return
        now = self._clock()
        try:
            receive = client.receive
            for data in batch:
                receive(data, now)
            packets = client.tunnel_packets()
        except Exception as e:
            self._fail(e)
            return
        if self._tun is not None and packets:
            write = self._tun.write
            for packet in packets:
                write(packet)
        self._pump()

    def _on_tun_readable(self) -> None:
        """Up to TUN_BATCH packets from the tun, encrypted, sent as one batch; one pump."""
        client, tun = self._client, self._tun
        if client is None or tun is None or self._finished:
            return
        now = self._clock()
        wire: list[bytes] = []
        try:
            read, encrypt = tun.read, client.encrypt_tunnel_packet
            for _ in range(TUN_BATCH):
                packet = read()
                if packet is None:
                    break
                sealed = encrypt(packet, now)
                if sealed is not None:
                    wire.append(sealed)
        except Exception as e:
            self._fail(e)
            return
        if wire and self._transport is not None:
            self._transport.send(wire)
        self._pump()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_transport(self) -> None:
        self._generation += 1
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _fail(self, error: BaseException) -> None:
        log.error("internal error: %r", error)
        if self._failure is None:
            self._failure = error
        self._finish(Outcome(ExitCode.SESSION_FAILED, f"internal error: {error!r}"))

    def _finish(self, outcome: Outcome) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(outcome)

    def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._close_transport()
        try:
            self._network.revert()
        finally:
            if self._tun is not None:
                assert self._loop is not None
                self._loop.remove_reader(self._tun.fileno())
                self._tun.close()
                self._tun = None
            self._network.close()


def default_client_factory(
    credentials: AuthUserPass | None = None, *, tls_ekm: bool = True
) -> ClientFactory:
    """Build the real engine client; `tls_ekm=False` keeps to the TLS 1.0 PRF key derivation."""

    def factory(config: Config, now: float) -> EngineClient:
        return Client(config, rng=os.urandom, now=now, credentials=credentials, tls_ekm=tls_ekm)

    return factory
