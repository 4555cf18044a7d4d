"""The run loop against the scripted client double, a real loopback socket and a fake tun.

The test plays the server side of the double's toy protocol over a real UDP or TCP socket on
127.0.0.1, and the network side through the fake tun's peer socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from miragevpn.config.model import Config, Proto, Remote, Transport
from qubes_miragevpn.sdnotify import sd_notify
from qubes_miragevpn.service import ExitCode, Outcome, Service, describe_stats
from tests.helpers.fake_client import FakeNetwork, FakeStats, ScriptedClient

TIMEOUT = 5.0


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


def make_service(
    port: int, transport: Transport, network: FakeNetwork, notes: list[str]
) -> tuple[Service, list[ScriptedClient]]:
    config = Config(
        client=True, remotes=(Remote(host="127.0.0.1", port=port, proto=Proto(transport)),)
    )
    clients: list[ScriptedClient] = []

    def factory(config: Config, now: float) -> ScriptedClient:
        clients.append(ScriptedClient(config, now))
        return clients[-1]

    service = Service(
        config, client_factory=factory, network=network, tun_name="tun%d", notify=notes.append
    )
    return service, clients


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
    network = FakeNetwork()
    notes: list[str] = []

    async def body(server: UdpServer, port: int) -> None:
        service, clients = make_service(port, Transport.UDP, network, notes)
        run = asyncio.create_task(service.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")  # the one timer is armed and fires
        # tunnel is up: tun → wire
        assert network.tun is not None
        await asyncio.sleep(0.05)
        network.tun.peer.send(b"ip-packet-1")
        await server.expect(b"Dip-packet-1")
        # wire → tun
        server.send(b"Dip-packet-2")
        got = await asyncio.wait_for(asyncio.to_thread(network.tun.peer.recv, 100), TIMEOUT)
        assert got == b"ip-packet-2"
        # orderly stop: explicit exit reaches the server, outcome OK, network undone
        service.stop(signal.SIGTERM)
        await server.expect(b"EXIT")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome == Outcome(ExitCode.OK, "closed")
        assert clients[0].calls[:3] == ["resolved", "connected", "receive"]

    asyncio.run(with_udp_server(body))
    assert [name for name, _ in network.applied] == ["tun0"]
    assert network.reverts >= 1 and network.closed
    assert network.tun is not None and network.tun.closed
    assert any(note.startswith("READY=1") for note in notes)
    assert "STATUS=TLS handshake" in notes


def test_restart_keeps_the_tun_and_reconnects() -> None:
    network = FakeNetwork()

    async def body(server: UdpServer, port: int) -> None:
        service, _ = make_service(port, Transport.UDP, network, [])
        run = asyncio.create_task(service.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        server.send(b"RESTART")
        await server.expect(b"HELLO")  # reconnected by itself after retry_in
        server.send(b"WELCOME")
        await server.expect(b"PING")
        server.send(b"HALT")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.exit_code is ExitCode.SESSION_FAILED
        assert "HALT" in outcome.reason

    asyncio.run(with_udp_server(body))
    assert len(network.applied) == 2  # the same tun configured again, not a second device
    assert network.tun is not None and network.tun.closed


def test_tcp_stream_and_lost_connection() -> None:
    network = FakeNetwork()

    async def main() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await accepted.put((r, w))

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        service, clients = make_service(port, Transport.TCP, network, [])
        run = asyncio.create_task(service.run())
        reader, writer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"HELLO"
        writer.close()  # the server goes away: the client is told, and retries
        reader, writer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"HELLO"
        assert "connection_lost" in clients[0].calls
        service.stop(signal.SIGINT)
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.exit_code is ExitCode.OK
        server.close()

    asyncio.run(main())
    assert network.applied == []  # never established: nothing configured


def test_stop_is_bounded_when_the_engine_never_ends() -> None:
    network = FakeNetwork()

    async def body(server: UdpServer, port: int) -> None:
        service, clients = make_service(port, Transport.UDP, network, [])
        service._close_timeout = 0.3  # a client that never confirms the close
        run = asyncio.create_task(service.run())
        await server.expect(b"HELLO")
        clients[0].close = lambda now: None  # type: ignore[method-assign]
        service.stop(signal.SIGTERM)
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.exit_code is ExitCode.OK
        assert "did not confirm" in outcome.reason

    asyncio.run(with_udp_server(body))


def test_connection_refused_tcp_reports_failure() -> None:
    network = FakeNetwork()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here

    async def main() -> None:
        service, clients = make_service(port, Transport.TCP, network, [])
        run = asyncio.create_task(service.run())
        for _ in range(100):
            if clients and clients[0].calls.count("connection_failed") >= 2:
                break
            await asyncio.sleep(0.05)
        assert clients[0].calls.count("connection_failed") >= 2  # retried, not stuck
        service.stop(signal.SIGTERM)
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(main())


def test_sd_notify_sends_to_the_socket(tmp_path: Path) -> None:
    path = f"{tmp_path}/notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", environ={})
    abstract = "@mvpn-test-notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + abstract[1:].encode())
        assert sd_notify("STATUS=x", environ={"NOTIFY_SOCKET": abstract})
        assert sock.recv(100) == b"STATUS=x"


def test_sigusr1_logs_statistics_and_again_at_exit(caplog: pytest.LogCaptureFixture) -> None:
    network = FakeNetwork()
    caplog.set_level(logging.INFO, logger="qubes_miragevpn.service")

    def stats_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics:")]

    async def body(server: UdpServer, port: int) -> None:
        service, clients = make_service(port, Transport.UDP, network, [])
        run = asyncio.create_task(service.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        for junk in (b"junk", b"\x00", b"\xff" * 40):
            server.send(junk)
        server.send(b"Dip-packet")
        assert network.tun is not None
        await asyncio.wait_for(asyncio.to_thread(network.tun.peer.recv, 100), TIMEOUT)
        before = len(stats_lines())
        os.kill(os.getpid(), signal.SIGUSR1)  # handled by the running loop
        for _ in range(100):
            if len(stats_lines()) > before:
                break
            await asyncio.sleep(0.02)
        line = stats_lines()[-1]
        stats = clients[0].stats
        assert line == (
            f"statistics: in {stats.packets_received} packets ({stats.bytes_received} bytes), "
            f"out {stats.packets_sent} packets ({stats.bytes_sent} bytes), "
            "tunnel packets in 1 out 0, dropped 3 (unknown packet 3)"
        )
        server.send(b"more junk")
        await asyncio.sleep(0.05)
        service.stop(signal.SIGTERM)
        await asyncio.wait_for(run, TIMEOUT)

    asyncio.run(with_udp_server(body))
    lines = stats_lines()
    assert len(lines) == 2, lines
    assert lines[-1].endswith("dropped 4 (unknown packet 4)")  # the same line, at exit


def test_describe_stats_in_words_and_defensive() -> None:
    stats = FakeStats(packets_received=5, bytes_received=700, packets_sent=2, bytes_sent=90)
    stats.drop("AuthenticationError")
    stats.drop("AuthenticationError")
    stats.drop("ReplayError")
    stats.drop("DecodeError")
    stats.drop("unknown key id")
    assert describe_stats(stats) == (
        "statistics: in 5 packets (700 bytes), out 2 packets (90 bytes), "
        "tunnel packets in 0 out 0, dropped 5 (failed authentication 2, malformed 1, "
        "replayed 1, unknown key id 1)"
    )

    class Partial:  # an engine whose Stats lacks some counters (or has moved them)
        packets_received = 3
        dropped: dict[str, int] = {}  # noqa: RUF012

    assert describe_stats(Partial()) == "statistics: in 3 packets, dropped 0"
    assert describe_stats(None) == "statistics: not available"


def test_bursts_travel_in_batches_both_ways() -> None:
    network = FakeNetwork()
    burst = 150

    async def body(server: UdpServer, port: int) -> None:
        service, clients = make_service(port, Transport.UDP, network, [])
        run = asyncio.create_task(service.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        await server.expect(b"PING")
        assert network.tun is not None and service._udp_stats is not None
        # tun → wire: packets waiting on the tun leave in one batch, each as its own datagram
        for i in range(8):  # the fake tun's socketpair queues at most 10
            network.tun.peer.send(b"up-%02d" % i)
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
        udp = service._udp_stats
        assert udp.receive_batches < udp.received  # more than one datagram per wake-up
        service.stop(signal.SIGTERM)
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
    network = FakeNetwork()
    config = Config(client=True, remotes=(Remote(host="127.0.0.1", port=1, proto=Proto()),))

    async def main() -> None:
        service = Service(
            config, client_factory=DeadlineClient, network=network, tun_name="tun%d", notify=print
        )
        client = DeadlineClient(config, 0.0)
        loop = asyncio.get_running_loop()
        service._client, service._loop, service._done = client, loop, loop.create_future()
        now = service._clock()

        client.deadline = now + 10
        service._arm_timer()
        armed = service._timer
        assert armed is not None
        for later in (now + 10, now + 11, now + 30, None):  # later or gone: the timer stays
            client.deadline = later
            service._arm_timer()
            assert service._timer is armed and not armed.cancelled()
        client.deadline = now + 0.05  # earlier: moved
        service._arm_timer()
        assert armed.cancelled() and service._timer is not armed

        client.deadline = now + 0.6  # later: the timer fires early, then again at the deadline
        service._arm_timer()
        await asyncio.sleep(0.25)
        assert len(client.handled) == 1 and client.handled[0] < client.deadline
        await asyncio.sleep(0.6)
        assert len(client.handled) == 2 and client.deadline is None  # met at the second try
        assert service._timer is None  # nothing left to wait for
        service._teardown()

    asyncio.run(main())
