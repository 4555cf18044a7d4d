"""The session loop against the scripted client double, a real loopback socket and a fake tun.

The test plays the server side of the double's toy protocol over a real UDP or TCP socket on
127.0.0.1, and the application through `RecordingHooks` (which opens a fake tun on the first
`tunnel_up`, as an application would, and records every hook call).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest

from miragevpn.config.model import Config, Proto, Remote, SocksProxy, Transport
from miragevpn.events import ChallengeRequested, TunnelSettings
from miragevpn.icmp6 import IPV6_HEADER, unreachable_reply
from qubes_miragevpn.hooks import CannotAsk
from qubes_miragevpn.session import Ending, Endpoint, Phase, SessionLoop, SessionOutcome
from qubes_miragevpn.transport import SO_MARK, UdpTransport
from tests.helpers.fake_client import SETTINGS, FakeTun, ScriptedClient

TIMEOUT = 5.0


@dataclass
class RecordingHooks:
    """An application double: records hook calls; owns the fake tun, as applications do."""

    calls: list[str] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    settings: list[TunnelSettings] = field(default_factory=list)
    outcomes: list[SessionOutcome] = field(default_factory=list)
    tun: FakeTun | None = None
    connect_delay: float = 0.0
    refuse_connect: bool = False
    refuse_tunnel: bool = False
    before_connect_saw: list[int] = field(default_factory=list)  # server datagrams seen then
    server: UdpServer | None = None
    code: str | None = None  # answer_challenge's answer; None: CannotAsk
    code_delay: float = 0.0
    asked: list[ChallengeRequested] = field(default_factory=list)

    async def answer_challenge(self, challenge: ChallengeRequested) -> str:
        self.calls.append("answer_challenge")
        self.asked.append(challenge)
        await asyncio.sleep(self.code_delay)
        if self.code is None:
            raise CannotAsk("nobody to ask")
        return self.code

    async def before_connect(self, endpoint: Endpoint) -> None:
        self.calls.append("before_connect")
        self.endpoints.append(endpoint)
        await asyncio.sleep(self.connect_delay)
        if self.server is not None:
            self.before_connect_saw.append(self.server.received.qsize())
        if self.refuse_connect:
            raise PermissionError("firewall policy could not be installed")

    async def tunnel_up(self, settings: TunnelSettings) -> FakeTun:
        self.calls.append("tunnel_up")
        self.settings.append(settings)
        if self.refuse_tunnel:
            raise OSError(19, "no such device")
        if self.tun is None:
            self.tun = FakeTun("tun0")
        return self.tun

    def restarting(self, reason: str, retry_in: float) -> None:
        self.calls.append(f"restarting: {reason}")

    def progress(self, message: str) -> None:
        self.calls.append(f"progress: {message}")

    def ended(self, outcome: SessionOutcome) -> None:
        self.calls.append("ended")
        self.outcomes.append(outcome)


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.peer = addr
        self.received.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.peer)

    async def expect(self, wanted: bytes, *, skip: tuple[bytes, ...] = (b"PING",)) -> None:
        while True:
            data = await asyncio.wait_for(self.received.get(), TIMEOUT)
            if data == wanted:
                return
            assert data in skip, f"expected {wanted!r}, got {data!r}"


def make_session(
    port: int,
    transport: Transport,
    hooks: RecordingHooks,
    settings: TunnelSettings = SETTINGS,
    **options: object,
) -> tuple[SessionLoop, list[ScriptedClient]]:
    config = Config(
        client=True, remotes=(Remote(host="127.0.0.1", port=port, proto=Proto(transport)),)
    )
    clients: list[ScriptedClient] = []

    def factory(config: Config, now: float) -> ScriptedClient:
        clients.append(ScriptedClient(config, now, settings=settings))
        return clients[-1]

    session = SessionLoop(config, hooks, client_factory=factory, **options)  # type: ignore[arg-type]
    return session, clients


async def with_udp_server(
    body: Callable[[UdpServer, int], Awaitable[None]],
) -> None:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(UdpServer, local_addr=("127.0.0.1", 0))
    try:
        await body(server, transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


def test_udp_session_end_to_end() -> None:
    hooks = RecordingHooks()

    async def body(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")  # the one timer is armed and fires
        await asyncio.sleep(0.05)
        tun = hooks.tun
        assert tun is not None and session.tun is tun
        state = session.state
        assert state.phase is Phase.UP and state.settings is not None
        assert state.endpoint == hooks.endpoints[0]
        tun.peer.send(b"ip-packet-1")  # tun → wire
        await server.expect(b"Dip-packet-1")
        server.send(b"Dip-packet-2")  # wire → tun
        got = await asyncio.wait_for(asyncio.to_thread(tun.peer.recv, 100), TIMEOUT)
        assert got == b"ip-packet-2"
        session.close("test over")  # explicit exit reaches the server
        assert session.state.phase is Phase.CLOSING and session.state.detail == "test over"
        await server.expect(b"EXIT")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert session.state.phase is Phase.ENDED and session.state.detail == "closed"
        assert outcome == SessionOutcome(ending=Ending.CLOSED, reason="closed")
        assert clients[0].calls[:3] == ["resolved", "connected", "receive"]

    asyncio.run(with_udp_server(body))
    assert hooks.calls == [
        "before_connect",
        "progress: TLS handshake",
        "tunnel_up",
        "ended",
    ]
    assert hooks.endpoints[0].address == ipaddress.ip_address("127.0.0.1")
    assert hooks.endpoints[0].transport is Transport.UDP
    assert hooks.outcomes == [SessionOutcome(ending=Ending.CLOSED, reason="closed")]
    assert hooks.tun is not None and not hooks.tun.closed  # the application's to close


def test_the_socket_opens_only_after_before_connect_returns() -> None:
    hooks = RecordingHooks(connect_delay=0.3)

    async def body(server: UdpServer, port: int) -> None:
        hooks.server = server
        session, _ = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        started = asyncio.get_running_loop().time()
        await server.expect(b"HELLO")
        assert asyncio.get_running_loop().time() - started >= 0.3
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))
    assert hooks.before_connect_saw == [0]  # nothing had reached the server while it ran
    assert hooks.endpoints[0].port > 0


def test_a_refusing_hook_ends_the_session_as_setup_failed() -> None:
    for hooks in (RecordingHooks(refuse_connect=True), RecordingHooks(refuse_tunnel=True)):

        async def body(server: UdpServer, port: int, hooks: RecordingHooks = hooks) -> None:
            session, _ = make_session(port, Transport.UDP, hooks)
            run = asyncio.create_task(session.run())
            if not hooks.refuse_connect:
                await server.expect(b"HELLO")
                server.send(b"WELCOME")
            outcome = await asyncio.wait_for(run, TIMEOUT)
            assert outcome.ending is Ending.SETUP_FAILED
            assert isinstance(outcome.error, OSError)
            assert outcome.reason.endswith(str(outcome.error))

        asyncio.run(with_udp_server(body))
        assert hooks.calls[-1] == "ended"


def test_restart_keeps_the_tun_and_reconnects() -> None:
    hooks = RecordingHooks()

    async def body(server: UdpServer, port: int) -> None:
        session, _ = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        server.send(b"RESTART")
        await asyncio.sleep(0.02)
        assert session.state.phase in (Phase.RESTARTING, Phase.RESOLVING, Phase.CONNECTING)
        await server.expect(b"HELLO")  # reconnected by itself after retry_in
        assert session.state.phase is Phase.NEGOTIATING
        assert session.state.settings is not None  # the last settings, kept
        server.send(b"WELCOME")
        await server.expect(b"PING")
        server.send(b"HALT")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.ending is Ending.FAILED
        assert "HALT" in outcome.reason

    asyncio.run(with_udp_server(body))
    assert hooks.calls.count("tunnel_up") == 2
    assert hooks.calls.count("before_connect") == 2
    assert "restarting: server restart" in hooks.calls


def test_a_one_time_code_is_asked_of_the_application_and_given_to_the_engine() -> None:
    hooks = RecordingHooks(code="424242", code_delay=0.2)

    async def body(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"CODE?")
        await asyncio.sleep(0.1)
        assert session.state.phase is Phase.ASKING and session.state.detail == "Enter code"
        await server.expect(b"HELLO 424242")  # the engine reconnected with the answer
        server.send(b"WELCOME")
        await server.expect(b"PING")
        assert clients[0].answers == ["424242"]
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))
    assert hooks.asked == [ChallengeRequested(text="Enter code", echo=False, dynamic=True)]


def test_the_logged_question_has_its_control_characters_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = RecordingHooks(code="1", code_delay=60.0)

    async def body(server: UdpServer, port: int) -> None:
        session, _ = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"CODE? \x1b]0;x\x07Code")
        await asyncio.sleep(0.1)
        assert session.state.detail == "\\x1b]0;x\\x07Code"  # shown by SIGUSR1, STATUS=
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    with caplog.at_level(logging.WARNING):
        asyncio.run(with_udp_server(body))
    asked = [r.getMessage() for r in caplog.records if "one-time code" in r.getMessage()]
    assert asked == ["the server asks for a one-time code: \\x1b]0;x\\x07Code"], asked


def test_nobody_to_ask_ends_the_session_and_close_cancels_the_question() -> None:
    hooks = RecordingHooks(code=None)

    async def body(server: UdpServer, port: int) -> None:
        session, _ = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"CODE?")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.ending is Ending.FAILED and outcome.reason == "nobody to ask"
        assert isinstance(outcome.error, CannotAsk)

    asyncio.run(with_udp_server(body))
    waiting = RecordingHooks(code="1", code_delay=60.0)

    async def closing(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, waiting)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"CODE?")
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        session.close()
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert asyncio.get_running_loop().time() - started < 2.0  # not the hook's 60 s
        assert outcome == SessionOutcome(ending=Ending.CLOSED, reason="closed")
        assert clients[0].answers == []

    asyncio.run(with_udp_server(closing))


def test_a_new_tun_from_tunnel_up_replaces_the_old_one() -> None:
    """The application decides the device: the loop pumps the one `tunnel_up` returned last
    and never closes one itself."""

    class NewTunEachTime(RecordingHooks):
        async def tunnel_up(self, settings: TunnelSettings) -> FakeTun:
            self.calls.append("tunnel_up")
            self.tun = FakeTun(f"tun{self.calls.count('tunnel_up')}")
            return self.tun

    hooks = NewTunEachTime()

    async def body(server: UdpServer, port: int) -> None:
        session, _ = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        first = hooks.tun
        server.send(b"RESTART")
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        second = hooks.tun
        assert first is not None and second is not None and first is not second
        assert session.tun is second
        first.peer.send(b"old")  # no longer read
        second.peer.send(b"new")
        await server.expect(b"Dnew")
        server.send(b"Dback")
        got = await asyncio.wait_for(asyncio.to_thread(second.peer.recv, 100), TIMEOUT)
        assert got == b"back"
        session.close()
        await asyncio.wait_for(run, TIMEOUT)
        assert not first.closed and not second.closed
        assert first.read() == b"old"  # still waiting where the loop left it

    asyncio.run(with_udp_server(body))


def test_tcp_stream_and_lost_connection() -> None:
    hooks = RecordingHooks()

    async def main() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        session, clients = make_session(port, Transport.TCP, hooks)
        run = asyncio.create_task(session.run())
        reader, writer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"HELLO"
        writer.close()  # the server goes away: the client is told, and retries
        reader, writer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"HELLO"
        assert "connection_lost" in clients[0].calls
        session.close()
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.ending is Ending.CLOSED
        writer.close()
        server.close()

    asyncio.run(main())
    assert "tunnel_up" not in hooks.calls  # never established
    assert [e.transport for e in hooks.endpoints] == [Transport.TCP, Transport.TCP]


def test_close_is_bounded_when_the_engine_never_ends() -> None:
    async def body(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, RecordingHooks(), close_timeout=0.3)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        clients[0].close = lambda now: None  # type: ignore[method-assign]
        session.close("SIGTERM")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.ending is Ending.CLOSED
        assert "did not confirm" in outcome.reason

    asyncio.run(with_udp_server(body))


def test_a_second_close_ends_at_once() -> None:
    async def body(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, RecordingHooks(), close_timeout=30)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        clients[0].close = lambda now: None  # type: ignore[method-assign]
        session.close("SIGTERM")
        session.close("SIGTERM")
        outcome = await asyncio.wait_for(run, 2)
        assert outcome.reason == "SIGTERM (forced)"

    asyncio.run(with_udp_server(body))


def test_close_before_run_starts_nothing() -> None:
    hooks = RecordingHooks()
    session, clients = make_session(9, Transport.UDP, hooks)
    session.close("profile changed")
    outcome = asyncio.run(asyncio.wait_for(session.run(), TIMEOUT))
    assert outcome == SessionOutcome(
        ending=Ending.CLOSED, reason="profile changed before the session started"
    )
    assert clients == [] and hooks.calls == ["ended"]


def test_connection_refused_tcp_reports_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here

    async def main() -> None:
        session, clients = make_session(port, Transport.TCP, RecordingHooks())
        run = asyncio.create_task(session.run())
        for _ in range(100):
            if clients and clients[0].calls.count("connection_failed") >= 2:
                break
            await asyncio.sleep(0.05)
        assert clients[0].calls.count("connection_failed") >= 2  # retried, not stuck
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
def test_socket_mark_is_set_on_the_transport() -> None:
    async def body(server: UdpServer, port: int) -> None:
        session, _ = make_session(port, Transport.UDP, RecordingHooks(), socket_mark=0x5A)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        opened = session._transport
        assert isinstance(opened, UdpTransport)
        assert opened._sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x5A
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))


def test_an_engine_exception_is_raised_from_run() -> None:
    class Broken(ScriptedClient):
        def handle_connected(self, now: float) -> None:
            raise ZeroDivisionError("engine bug")

    hooks = RecordingHooks()

    async def body(server: UdpServer, port: int) -> None:
        config = Config(client=True, remotes=(Remote(host="127.0.0.1", port=port, proto=Proto()),))
        session = SessionLoop(config, hooks, client_factory=Broken)
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(session.run(), TIMEOUT)

    asyncio.run(with_udp_server(body))
    assert "ended" not in hooks.calls


def test_bursts_travel_in_batches_both_ways() -> None:
    hooks = RecordingHooks()
    burst = 150

    async def body(server: UdpServer, port: int) -> None:
        session, clients = make_session(port, Transport.UDP, hooks)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        tun, udp = hooks.tun, session.udp_stats
        assert tun is not None and udp is not None
        # tun → wire: packets waiting on the tun leave in one batch, each as its own datagram
        for i in range(8):  # the fake tun's socketpair queues at most 10
            tun.peer.send(b"up-%02d" % i)
        for i in range(8):
            await server.expect(b"Dup-%02d" % i)
        # wire → tun: a burst is read in batches, every datagram reaches the client
        for i in range(burst):  # sent at once: nothing on this side yields to the loop
            server.send(b"Ddown-%03d" % i)
        client = clients[0]
        for _ in range(200):
            if client.stats.tunnel_packets_in >= burst:
                break
            await asyncio.sleep(0.01)
        assert client.stats.tunnel_packets_in == burst
        assert udp.receive_batches < udp.received  # more than one datagram per wake-up
        session.close()
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))


class DeadlineClient(ScriptedClient):
    """A double whose deadline the test sets, and which records when its timer is handled."""

    def __init__(self, config: Config, now: float) -> None:
        super().__init__(config, now)
        self.handled: list[float] = []

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None  # acted on: an engine moves or clears a deadline it has met


def test_timer_moves_only_for_an_earlier_deadline() -> None:
    config = Config(client=True, remotes=(Remote(host="127.0.0.1", port=1, proto=Proto()),))

    async def main() -> None:
        session = SessionLoop(config, RecordingHooks(), client_factory=DeadlineClient)
        client = DeadlineClient(config, 0.0)
        loop = asyncio.get_running_loop()
        session._client, session._loop, session._done = client, loop, loop.create_future()
        now = session._clock()

        client.deadline = now + 10
        session._arm_timer()
        armed = session._timer
        assert armed is not None
        for later in (now + 10, now + 11, now + 30, None):  # later or gone: the timer stays
            client.deadline = later
            session._arm_timer()
            assert session._timer is armed and not armed.cancelled()
        client.deadline = now + 0.05  # earlier: moved
        session._arm_timer()
        assert armed.cancelled() and session._timer is not armed

        client.deadline = now + 0.6  # later: the timer fires early, then again at the deadline
        session._arm_timer()
        await asyncio.sleep(0.25)
        assert len(client.handled) == 1 and client.handled[0] < client.deadline
        await asyncio.sleep(0.6)
        assert len(client.handled) == 2 and client.deadline is None  # met at the second try
        assert session._timer is None  # nothing left to wait for
        await session._teardown()

    asyncio.run(main())


def test_block_ipv6_answers_ipv6_from_the_tun_and_sends_only_ipv4() -> None:
    """settings.block_ipv6_source: an IPv6 packet read from the tun goes back as its ICMPv6
    no-route answer (miragevpn.icmp6) and never to the server; IPv4 still goes out."""
    hooks = RecordingHooks()
    source = ipaddress.IPv6Address("fd00:8::1")
    me, there = ipaddress.IPv6Address("fd00:8::2"), ipaddress.IPv6Address("2001:db8::80")
    ipv6 = IPV6_HEADER.pack(0x6000_0000, 4, 17, 64, me.packed, there.packed) + b"data"
    ipv4 = b"\x45" + bytes(19)

    async def body(server: UdpServer, port: int) -> None:
        settings = replace(SETTINGS, block_ipv6_source=source)
        session, _ = make_session(port, Transport.UDP, hooks, settings)
        run = asyncio.create_task(session.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        await asyncio.sleep(0.05)
        tun = hooks.tun
        assert tun is not None
        tun.peer.send(ipv6)
        answer = await asyncio.wait_for(asyncio.to_thread(tun.peer.recv, 2000), TIMEOUT)
        assert answer == unreachable_reply(ipv6, source, mtu=SETTINGS.mtu)
        tun.peer.send(ipv4)
        await server.expect(b"D" + ipv4)  # the IPv6 packet never reached the server before it
        assert session.ipv6_blocked == 1
        session.close("test over")
        await server.expect(b"EXIT")
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))


def test_through_a_socks5_proxy_the_endpoint_is_the_proxy_and_early_bytes_wait() -> None:
    """A loopback SOCKS5 double answers the CONNECT and sends the "server's" first bytes in
    the same write: they reach the engine only after handle_connected (else the double
    engine would drop WELCOME and never come up)."""
    hooks = RecordingHooks()
    seen: list[bytes] = []

    async def main() -> None:
        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(await r.readexactly(3))  # VER, NMETHODS, METHODS
            w.write(b"\x05\x00")
            head = await r.readexactly(5)
            seen.append(head + await r.readexactly(head[4] + 2))
            w.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00" + b"WELCOME")
            seen.append(await r.readexactly(5))  # HELLO, after the handshake
            await r.read()  # until the session closes
            w.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = Config(
            client=True,
            remotes=(Remote(host="vpn.behind.example", port=443, proto=Proto(Transport.TCP)),),
            proxy=SocksProxy("127.0.0.1", port),
        )
        session = SessionLoop(config, hooks, client_factory=lambda c, now: ScriptedClient(c, now))
        run = asyncio.create_task(session.run())
        for _ in range(200):
            if "tunnel_up" in hooks.calls:
                break
            await asyncio.sleep(0.025)
        session.close()
        await asyncio.wait_for(run, TIMEOUT)
        server.close()

    asyncio.run(main())
    assert "tunnel_up" in hooks.calls, hooks.calls
    assert seen[0] == b"\x05\x01\x00"
    assert seen[1] == b"\x05\x01\x00\x03\x12vpn.behind.example\x01\xbb"
    assert seen[2] == b"HELLO"
    (endpoint,) = hooks.endpoints
    assert (str(endpoint.address), endpoint.transport) == ("127.0.0.1", Transport.TCP)
    assert endpoint.via is not None and endpoint.via.host == "vpn.behind.example"
