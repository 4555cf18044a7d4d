"""The unix client on the session loop: signals, sd_notify, statistics, exit codes, teardown.

The scripted client double plays the engine, a UDP socket on 127.0.0.1 the server (the toy
protocol of tests/helpers/fake_client.py), and `FakeNetwork` the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from miragevpn.config.model import Config, Proto, Remote
from qubes_miragevpn.netlink import NetworkConfigurator, Skipped
from qubes_miragevpn.sdnotify import sd_notify
from qubes_miragevpn.unixclient import ExitCode, Outcome, UnixClient
from tests.helpers.fake_client import FakeNetwork, ScriptedClient
from tests.qubes_miragevpn.test_session import TIMEOUT, UdpServer, with_udp_server


def make_client(
    port: int, network: FakeNetwork, notes: list[str], **config: object
) -> tuple[UnixClient, list[ScriptedClient]]:
    cfg = Config(
        client=True,
        remotes=(Remote(host="127.0.0.1", port=port, proto=Proto()),),
        **config,  # type: ignore[arg-type]
    )
    clients: list[ScriptedClient] = []

    def factory(config: Config, now: float) -> ScriptedClient:
        clients.append(ScriptedClient(config, now))
        return clients[-1]

    async def open_network() -> NetworkConfigurator:
        return network  # type: ignore[return-value]

    client = UnixClient(
        cfg,
        client_factory=factory,
        tun_name="tun%d",
        open_network=open_network,
        notify=notes.append,
    )
    return client, clients


async def up(server: UdpServer) -> None:
    await server.expect(b"HELLO")
    server.send(b"WELCOME")
    await server.expect(b"PING")


def run_with_server(body: Callable[[UdpServer, int], Awaitable[None]]) -> None:
    asyncio.run(with_udp_server(body))


def test_sigterm_closes_in_order_and_undoes_everything() -> None:
    network = FakeNetwork()
    notes: list[str] = []

    async def body(server: UdpServer, port: int) -> None:
        client, _ = make_client(port, network, notes)
        run = asyncio.create_task(client.run())
        await up(server)
        assert network.tun is not None and not network.tun.closed
        assert any(
            note.startswith("READY=1\nSTATUS=connected: tun0, 10.8.0.2/24") for note in notes
        )
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the running loop
        await server.expect(b"EXIT")
        assert await asyncio.wait_for(run, TIMEOUT) == Outcome(ExitCode.OK, "closed")

    run_with_server(body)
    assert notes[0] == "STATUS=starting"
    assert "STATUS=TLS handshake" in notes and "STOPPING=1" in notes
    assert network.allow_routes == [True]
    assert network.closed and network.reverts == 1
    assert network.tun is not None and network.tun.closed
    # the handlers are gone with the loop: SIGTERM is the default again
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_exit_codes_follow_the_outcome() -> None:
    network = FakeNetwork()

    async def halted(server: UdpServer, port: int) -> None:
        client, _ = make_client(port, network, [])
        run = asyncio.create_task(client.run())
        await up(server)
        server.send(b"RESTART")
        await up(server)
        server.send(b"HALT")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.exit_code is ExitCode.SESSION_FAILED and "HALT" in outcome.reason

    run_with_server(halted)
    assert len(network.applied) == 2  # the same tun configured again, not a second device

    class NoTun(FakeNetwork):
        def open_tun(self, name: str) -> object:  # type: ignore[override]
            raise PermissionError(1, "Operation not permitted")

    no_tun = NoTun()

    async def setup_failed(server: UdpServer, port: int) -> None:
        client, _ = make_client(port, no_tun, [])
        run = asyncio.create_task(client.run())
        await server.expect(b"HELLO")
        server.send(b"WELCOME")
        outcome = await asyncio.wait_for(run, TIMEOUT)
        assert outcome.exit_code is ExitCode.SETUP_FAILED
        assert "Operation not permitted" in outcome.reason

    run_with_server(setup_failed)
    assert no_tun.closed


def test_route_nopull_disallows_routes_and_refused_changes_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qubes_miragevpn")
    network = FakeNetwork(refuse=(Skipped("adding route 10.3.0.0/16 via 1.1.1.1", "ENETUNREACH"),))

    async def body(server: UdpServer, port: int) -> None:
        client, _ = make_client(port, network, [], route_nopull=True)
        run = asyncio.create_task(client.run())
        await up(server)
        assert client.skipped_changes == 1
        client.stop()
        await asyncio.wait_for(run, TIMEOUT)

    run_with_server(body)
    assert network.allow_routes == [False]
    logged = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("tunnel up: tun0")
        and m.endswith("1 changes refused by the system (logged above)")
        for m in logged
    ), logged
    assert "tunnel set-up: 1 changes refused by the system" in logged


def test_sigusr1_logs_statistics_and_again_at_exit(caplog: pytest.LogCaptureFixture) -> None:
    network = FakeNetwork()
    caplog.set_level(logging.INFO, logger="qubes_miragevpn.unixclient")

    def stats_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics:")]

    async def body(server: UdpServer, port: int) -> None:
        client, clients = make_client(port, network, [])
        run = asyncio.create_task(client.run())
        await up(server)
        for junk in (b"junk", b"\x00", b"\xff" * 40):
            server.send(junk)
        server.send(b"Dip-packet")
        assert network.tun is not None
        await asyncio.wait_for(asyncio.to_thread(network.tun.peer.recv, 100), TIMEOUT)
        before = len(stats_lines())
        os.kill(os.getpid(), signal.SIGUSR1)
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
        client.stop(signal.SIGTERM)
        await asyncio.wait_for(run, TIMEOUT)

    run_with_server(body)
    lines = stats_lines()
    assert len(lines) == 2, lines
    states = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session: ")]
    assert states[0].startswith("session: tunnel up for 0s with 127.0.0.1 port ")
    assert states[0].endswith("over UDP: tun0, 10.8.0.2/24, mtu 1500, cipher AES-256-GCM (tls-ekm)")
    assert states[-1] == "session: ended for 0s: closed"
    assert lines[-1].endswith("dropped 4 (unknown packet 4)")  # the same line, at exit
    udp_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("UDP socket")]
    assert len(udp_lines) == 2


def test_a_netlink_that_cannot_open_is_setup_failed() -> None:
    async def refuse() -> NetworkConfigurator:
        raise PermissionError(1, "Operation not permitted")

    client = UnixClient(
        Config(client=True, remotes=(Remote(host="127.0.0.1", port=1, proto=Proto()),)),
        client_factory=ScriptedClient,
        tun_name="tun%d",
        open_network=refuse,
        notify=lambda note: None,
    )
    outcome = asyncio.run(client.run())
    assert outcome.exit_code is ExitCode.SETUP_FAILED
    assert "netlink" in outcome.reason


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


def test_sd_notify_never_blocks_on_a_receiver_that_stopped_reading(tmp_path: Path) -> None:
    path = f"{tmp_path}/notify"
    results: list[bool] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)  # and never read: its queue fills up

        def send_many() -> None:
            results.extend(
                sd_notify("STATUS=" + "x" * 1000, environ={"NOTIFY_SOCKET": path})
                for _ in range(5000)
            )

        sender = threading.Thread(target=send_many, daemon=True)
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "sd_notify blocked on a full receiver"
    assert results[0] and not results[-1]  # sent while there was room, then dropped
