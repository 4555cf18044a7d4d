"""The one run loop: engine + transport + tun + timer, on asyncio, for any application.

The engine (`miragevpn.client.Client`) does no IO; `SessionLoop` does the session's IO and asks
its application (`SessionHooks`) at every step that is the application's to decide:

    events      client.next_event() until None, each acted on (`_handle`, exhaustive match)
    resolve     ResolutionRequested → the loop's getaddrinfo (its executor: never blocks)
    connect     ConnectionRequested → `await hooks.before_connect(endpoint)` (a gateway puts its
                Connecting firewall policy in place here) → socket (SO_MARK `socket_mark`)
                → client.handle_connected / handle_connection_failed; a generation number
                makes callbacks of a replaced or closed transport harmless
    tunnel up   TunnelEstablished → `await hooks.tunnel_up(settings)`: the application opens
                or keeps the tun device, applies addresses and routes, and returns the device,
                which the loop then pumps (and stops pumping when the loop ends; it never
                closes it, nor reverts anything)
    wire in     a batch of datagrams (up to transport.RECV_BATCH, or one TCP chunk) →
                client.receive() each → client.tunnel_packets() → tun, one write per packet
    tun in      up to TUN_BATCH packets per wake-up → client.encrypt_tunnel_packet() each → one
                transport.send(batch) (UDP GSO when the kernel has it); with `block-ipv6`
                (settings.block_ipv6_source) an IPv6 packet is not sent: its ICMPv6 no-route
                answer (miragevpn.icmp6) is written back to the tun
    wire out    client.data_to_send() → transport, after every call (or batch) into the client
    timer       exactly one asyncio timer for client.get_timer(), moved only when the deadline
                comes earlier than the armed one (a later deadline is left to an early wake-up,
                which costs one no-op handle_timer, instead of a cancel + call_later per batch)
    restart     SessionRestarting → `hooks.restarting(reason, retry_in)`
    code        ChallengeRequested → phase ASKING (detail: the challenge text) and a task that
                awaits `hooks.answer_challenge(challenge)` → client.answer_challenge(code);
                the task is cancelled when the session ends; `CannotAsk` ends it (FAILED)
    progress    ProgressReported → `hooks.progress(message)`
    end         SessionEnded, a failed hook, or `close()` → `hooks.ended(outcome)`; `run()`
                returns the same `SessionOutcome`

Hooks run one at a time, in the order of the events that caused them (a lock), and a hook
that has started is never cancelled: `run()` waits for it before it returns, so the
application's own teardown never races a half-applied change. A hook that raises ends the
session with `Ending.SETUP_FAILED`.

Not the loop's: signals, sd_notify, exit codes, the tun device's life, routes and firewall.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar, assert_never

from miragevpn import icmp6
from miragevpn.client import Client
from miragevpn.config.model import AddressFamily, AuthUserPass, Config, Transport
from miragevpn.errors import ProxyError
from miragevpn.events import (
    ChallengeRequested,
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
from miragevpn.printable import printable
from miragevpn.statickey import StaticKeyClient

from . import transport as transports
from .describe import describe_via
from .hooks import CannotAsk, Ending, Endpoint, Phase, SessionHooks, SessionOutcome, SessionState
from .tun import TunDevice

__all__ = [
    "ClientFactory",
    "Ending",
    "Endpoint",
    "EngineClient",
    "Phase",
    "SessionHooks",
    "SessionLoop",
    "SessionOutcome",
    "SessionState",
    "engine_client_factory",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")
TUN_BATCH = 64  # packets read from the tun per wake-up, so the wire side is never starved
CLOSE_TIMEOUT = 5.0  # seconds to wait for SessionEnded after close() (explicit-exit-notify)
HOOK_WAIT = 30.0  # seconds run() waits at the end for a hook that is still running
MAX_EVENTS_PER_PUMP = 10_000  # bounded: an engine emitting events forever is a bug


class EngineClient(Protocol):
    """The engine's public surface, as documented in docs/ARCHITECTURE.md (contract 1)."""

    def receive(self, data: bytes, *, now: float) -> None: ...
    def data_to_send(self, *, now: float) -> list[bytes]: ...
    def encrypt_tunnel_packet(self, ip_packet: bytes, *, now: float) -> bytes | None: ...
    def tunnel_packets(self) -> list[bytes]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, *, now: float) -> None: ...
    def next_event(self) -> Event | None: ...
    def handle_resolved(self, addresses: Sequence[IPAddress], *, now: float) -> None: ...
    def handle_resolve_failed(self, *, now: float) -> None: ...
    def handle_connected(self, *, now: float) -> None: ...
    def handle_connection_failed(self, *, now: float) -> None: ...
    def handle_connection_lost(self, *, now: float) -> None: ...
    def close(self, *, now: float) -> None: ...
    def answer_challenge(self, response: str, *, now: float) -> None: ...


ClientFactory = Callable[[Config, float], EngineClient]


def engine_client_factory(
    credentials: AuthUserPass | None = None, *, tls_ekm: bool = True
) -> ClientFactory:
    """Build the real engine client; `tls_ekm=False` keeps to the TLS 1.0 PRF key derivation."""

    def factory(config: Config, now: float) -> EngineClient:
        if config.secret is not None:  # static-key mode: no TLS (miragevpn.statickey)
            return StaticKeyClient(config, rng=os.urandom, now=now, wall_clock=time.time)
        return Client(
            config,
            rng=os.urandom,
            now=now,
            wall_clock=time.time,
            credentials=credentials,
            tls_ekm=tls_ekm,
        )

    return factory


def _families(family: AddressFamily) -> int:
    return {
        AddressFamily.ANY: socket.AF_UNSPEC,
        AddressFamily.IPV4: socket.AF_INET,
        AddressFamily.IPV6: socket.AF_INET6,
    }[family]


class SessionLoop:
    """Runs one client session until it ends; `run()` returns the outcome.

    An exception from the engine (a bug, or the client factory refusing the configuration)
    ends the loop and is raised from `run()`."""

    def __init__(
        self,
        config: Config,
        hooks: SessionHooks,
        *,
        client_factory: ClientFactory,
        clock: Callable[[], float] = time.monotonic,
        close_timeout: float = CLOSE_TIMEOUT,
        socket_mark: int | None = None,
    ) -> None:
        self._config = config
        self._hooks = hooks
        self._client_factory = client_factory
        self._clock = clock
        self._close_timeout = close_timeout
        self._socket_mark = socket_mark

        self._client: EngineClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: transports.Transport | None = None
        self._generation = 0  # bumped on every connect/disconnect: stale callbacks are ignored
        self._tun: TunDevice | None = None
        self._block_ipv6: tuple[ipaddress.IPv6Address, int] | None = None  # (source, tun MTU)
        self.ipv6_blocked = 0  # IPv6 packets from the tun answered (or dropped) by block-ipv6
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0  # the client deadline `_timer` was armed for
        self._udp_stats: transports.UdpStats | None = None  # of the current (or last) UDP socket
        self._tasks: set[asyncio.Task[None]] = set()  # resolve/connect: cancelled at the end
        self._hook_tasks: set[asyncio.Task[Any]] = set()  # awaited at the end, never cancelled
        self._hook_lock = asyncio.Lock()
        self._done: asyncio.Future[SessionOutcome] | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self._state = SessionState(phase=Phase.STARTING, since=clock())

    # ------------------------------------------------------------------ entry points

    async def run(self) -> SessionOutcome:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        try:
            if self._closing:  # close() came before run(): nothing was started
                self._finish(SessionOutcome(ending=Ending.CLOSED, reason=self._state.detail))
            else:
                self._client = self._client_factory(self._config, self._clock())
                self._pump()
            outcome = await self._done
        finally:
            await self._teardown()
        if self._failure is not None:
            raise self._failure
        self._hooks.ended(outcome)
        return outcome

    def close(self, reason: str = "stop request") -> None:
        """Close the session in order (explicit-exit-notify), bounded by the close timeout;
        a second call ends it at once. Before `run()`: `run()` returns at once, CLOSED."""
        if self._loop is None:
            if not self._closing:
                self._closing = True
                self._enter(Phase.CLOSING, detail=f"{reason} before the session started")
            return
        if self._finished:
            return
        if self._closing:
            log.warning("%s again: stopping now", reason)
            self._finish(SessionOutcome(ending=Ending.CLOSED, reason=f"{reason} (forced)"))
            return
        self._closing = True
        self._enter(Phase.CLOSING, detail=reason)
        log.info("%s: closing the session", reason)
        self._loop.call_later(
            self._close_timeout,
            self._finish,
            SessionOutcome(
                ending=Ending.CLOSED,
                reason=f"{reason}; the server did not confirm within the close timeout",
            ),
        )
        self._call(lambda c, now: c.close(now=now))

    @property
    def engine_stats(self) -> object:
        """The engine's counters (`describe.describe_stats` says them in words)."""
        return getattr(self._client, "stats", None)

    @property
    def udp_stats(self) -> transports.UdpStats | None:
        """The counters of the current (or last) UDP socket."""
        return self._udp_stats

    @property
    def state(self) -> SessionState:
        """Where the session is now (`describe.describe_state` says it in words)."""
        return self._state

    @property
    def tun(self) -> TunDevice | None:
        """The device the loop pumps (the last one `tunnel_up` returned)."""
        return self._tun

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
            for _ in range(MAX_EVENTS_PER_PUMP):
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
        wire = self._client.data_to_send(now=self._clock())
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
        self._call(lambda c, now: c.handle_timer(now=now))

    # ------------------------------------------------------------------ events

    def _handle(self, event: Event) -> None:
        match event:
            case ResolutionRequested(host=host, family=family):
                log.info("resolving %s", host)
                self._enter(Phase.RESOLVING, detail=host)
                self._spawn(self._resolve(host, family))
            case ConnectionRequested(address=address, port=port, transport=kind, via=via):
                self._close_transport()
                endpoint = Endpoint(address=address, port=port, transport=kind, via=via)
                self._spawn(self._connect(endpoint, self._generation))
            case DisconnectionRequested(reason=reason):
                log.info("disconnecting: %s", reason)
                self._close_transport()
            case ProgressReported(message=message):
                log.info("%s", message)
                self._enter(self._state.phase, detail=message)
                self._hooks.progress(message)
            case TlsEstablished(version=version, cipher=cipher, peer_subject=subject):
                log.info("TLS established: %s %s with %s", version, cipher, subject)
            case TunnelEstablished(settings=settings):
                self._spawn(self._tunnel_up(settings))
            case ControlMessageReceived(message=message):
                log.info("server says: %s", message)
            case SessionRestarting(reason=reason, retry_in=retry_in):
                log.warning("session lost (%s); reconnecting in %.1fs", reason, retry_in)
                self._enter(Phase.RESTARTING, detail=reason)
                self._hooks.restarting(reason, retry_in)
            case ChallengeRequested(text=text, dynamic=dynamic):
                who = "the server asks for" if dynamic else "the profile asks for"
                shown = printable(text)  # a static-challenge text comes from the profile
                log.warning("%s a one-time code: %s", who, shown)
                self._enter(Phase.ASKING, detail=shown)
                self._spawn(self._ask(event))
            case SessionEnded(reason=reason, error=error):
                self._close_transport()
                if error is None:
                    log.info("session ended: %s", reason)
                    self._finish(SessionOutcome(ending=Ending.CLOSED, reason=reason))
                else:
                    detail = reason if str(error) in reason else f"{reason} ({error})"
                    log.error("session ended: %s", detail)
                    self._finish(SessionOutcome(ending=Ending.FAILED, reason=detail, error=error))
            case _:
                assert_never(event)

    async def _hook(self, what: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run one hook after the ones before it; (False, None) if it raised (session ended)
        or the session ended before its turn. A caller cancelled while waiting leaves the
        hook running: `run()` waits for it."""

        async def serialized() -> tuple[bool, T | None]:
            async with self._hook_lock:
                if self._finished:
                    return False, None
                try:
                    return True, await call()
                except Exception as e:
                    log.error("%s failed: %s", what, e)
                    self._finish(
                        SessionOutcome(
                            ending=Ending.SETUP_FAILED, reason=f"{what} failed: {e}", error=e
                        )
                    )
                    return False, None

        task = asyncio.ensure_future(serialized())
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)
        return await asyncio.shield(task)

    async def _tunnel_up(self, settings: TunnelSettings) -> None:
        ok, tun = await self._hook("setting up the tunnel", lambda: self._hooks.tunnel_up(settings))
        if not ok or tun is None or self._finished:
            return
        source = settings.block_ipv6_source
        self._block_ipv6 = None if source is None else (source, settings.mtu)
        if source is not None:
            log.info("block-ipv6: IPv6 from %s is answered with ICMPv6 no-route", tun.name)
        if tun is not self._tun:
            assert self._loop is not None
            if self._tun is not None:
                self._loop.remove_reader(self._tun.fileno())
            self._tun = tun
            self._loop.add_reader(tun.fileno(), self._on_tun_readable)
        self._enter(Phase.UP, settings=settings, detail="")

    async def _ask(self, challenge: ChallengeRequested) -> None:
        try:
            code = await self._hooks.answer_challenge(challenge)
        except CannotAsk as e:
            log.error("%s", e)
            self._finish(SessionOutcome(ending=Ending.FAILED, reason=str(e), error=e))
            return
        if not self._finished:
            log.info("one-time code given; connecting")
            self._call(lambda c, now: c.answer_challenge(code, now=now))

    # ------------------------------------------------------------------ IO callbacks

    async def _resolve(self, host: str, family: AddressFamily) -> None:
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(
                host, None, family=_families(family), type=socket.SOCK_DGRAM
            )
        except (OSError, UnicodeError) as e:
            log.warning("cannot resolve %s: %s", host, e)
            self._call(lambda c, now: c.handle_resolve_failed(now=now))
            return
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address not in addresses:
                addresses.append(address)
        log.info("%s is %s", host, ", ".join(map(str, addresses)))
        self._call(lambda c, now: c.handle_resolved(addresses, now=now))

    async def _connect(self, endpoint: Endpoint, generation: int) -> None:
        ok, _ = await self._hook(
            f"preparing to connect to {endpoint.address}",
            lambda: self._hooks.before_connect(endpoint),
        )
        if not ok or generation != self._generation or self._finished:
            return
        address, port, kind, via = endpoint.address, endpoint.port, endpoint.transport, endpoint.via
        log.info(
            "connecting to %s port %d over %s%s",
            address,
            port,
            kind.value.upper(),
            describe_via(via),
        )
        self._enter(Phase.CONNECTING, endpoint=endpoint, detail="")

        def on_data(batch: list[bytes]) -> None:
            if generation == self._generation:
                self._on_wire_data(batch)

        def on_lost(exc: Exception | None) -> None:
            if generation == self._generation and self._transport is not None:
                log.warning("connection to the server lost: %s", exc or "closed by the server")
                self._transport = None
                self._call(lambda c, now: c.handle_connection_lost(now=now))

        opened: transports.Transport
        mark = self._socket_mark
        try:
            if kind is Transport.UDP:
                opened = await transports.open_udp(address, port, on_data, on_lost, mark=mark)
            else:
                timeout = min(self._config.connect_timeout, 120.0)
                opened = await transports.open_tcp(
                    address, port, on_data, on_lost, timeout=timeout, mark=mark, via=via
                )
        except (OSError, TimeoutError, ProxyError) as e:
            log.warning(
                "cannot connect to %s port %d%s: %s",
                address,
                port,
                describe_via(via),
                e or "timed out",
            )
            if generation == self._generation:
                self._call(lambda c, now: c.handle_connection_failed(now=now))
            return
        if generation != self._generation or self._finished:
            opened.close()
            return
        self._transport = opened
        if isinstance(opened, transports.UdpTransport):
            self._udp_stats = opened.stats
        log.info("connected to %s port %d%s", address, port, describe_via(via))
        self._enter(Phase.NEGOTIATING, detail="")
        self._call(lambda c, now: c.handle_connected(now=now))

    def _on_wire_data(self, batch: list[bytes]) -> None:
        """A batch from the transport: all into the client, its packets to the tun, one pump."""
        client = self._client
        if client is None or self._finished:
            return
        now = self._clock()
        try:
            receive = client.receive
            for data in batch:
                receive(data, now=now)
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
        block = self._block_ipv6
        try:
            read, encrypt = tun.read, client.encrypt_tunnel_packet
            for _ in range(TUN_BATCH):
                packet = read()
                if packet is None:
                    break
                if block is not None and icmp6.is_ipv6(packet):
                    self.ipv6_blocked += 1
                    reply = icmp6.unreachable_reply(packet, block[0], mtu=block[1])
                    if reply is not None:
                        tun.write(reply)
                    continue
                sealed = encrypt(packet, now=now)
                if sealed is not None:
                    wire.append(sealed)
        except Exception as e:
            self._fail(e)
            return
        if wire and self._transport is not None:
            self._transport.send(wire)
        self._pump()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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
        self._finish(
            SessionOutcome(ending=Ending.FAILED, reason=f"internal error: {error!r}", error=error)
        )

    def _finish(self, outcome: SessionOutcome) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(outcome)
            self._enter(Phase.ENDED, detail=outcome.reason)

    def _enter(self, phase: Phase, **changes: Any) -> None:
        """Move `state` to `phase` (its time only if the phase changes); once closing, only
        on to ENDED."""
        current = self._state
        closing = current.phase in (Phase.CLOSING, Phase.ENDED)
        if closing and phase is not current.phase and phase is not Phase.ENDED:
            return
        since = current.since if phase is current.phase else self._clock()
        self._state = replace(current, phase=phase, since=since, **changes)

    async def _teardown(self) -> None:
        self._finish(SessionOutcome(ending=Ending.CLOSED, reason="cancelled"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        self._close_transport()
        if self._hook_tasks:
            await asyncio.wait(list(self._hook_tasks), timeout=HOOK_WAIT)
        if self._tun is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._tun.fileno())
