"""Renegotiation (reference §8) of the engine's `Client` against a real OpenVPN 2.6 server.

As in test_engine_interop, the test starts the server in one namespace and runs this module as a
program (`python -m tests.interop.test_renegotiation CONFIG GOAL`) in the client namespace. The
program drives `Client` with a plain UDP socket, sends an ICMP echo request to the server's tun
address every `ECHO_INTERVAL` seconds once the tunnel is up, and stops once GOAL renegotiations
have finished and `SETTLE` more seconds passed (so the newest key carried traffic too). It
prints one JSON line: echo requests and replies, the key ids of the data packets it sent and
received, the client's progress messages. Every loop is bounded by a wall-clock deadline.

- server-initiated: the server has `reneg-sec 10`; the client keeps sending on the old key for
  min(hand-window, reneg-sec/2) after each soft reset (OpenVPN's rule; the client here has
  `hand-window 5`), then on the new one.
- client-initiated: the server has `reneg-sec 0`; the client's reneg-sec / reneg-pkts /
  reneg-bytes trigger.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.reneg_driver import EchoLedger, run_driver

DRIVER_TIMEOUT = 45.0
ECHO_INTERVAL = 0.25
SETTLE = 6.0  # seconds after the last wanted renegotiation (> the 5 s send switch)
REPLY_GRACE = 1.0  # an echo request younger than this at the end may still be unanswered


def drive(config_path: str, goal: int) -> dict[str, Any]:
    from miragevpn.client import Client
    from miragevpn.events import (
        ConnectionRequested,
        ProgressReported,
        SessionEnded,
        SessionRestarting,
        TunnelEstablished,
    )
    from qubes_miragevpn.cli import load_config

    config = load_config(Path(config_path))
    client = Client(config, rng=os.urandom, now=time.monotonic(), wall_clock=time.time)
    result: dict[str, Any] = {"progress": []}
    ledger = EchoLedger(ECHO_INTERVAL, REPLY_GRACE)
    sock: socket.socket | None = None
    source: bytes | None = None
    goal_reached_at: float | None = None
    deadline = time.monotonic() + DRIVER_TIMEOUT

    def finish(failure: str | None) -> dict[str, Any]:
        return ledger.finish(result, client, failure)

    while time.monotonic() < deadline:
        now = time.monotonic()
        while (event := client.next_event()) is not None:
            if isinstance(event, ConnectionRequested):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.connect((str(event.address), event.port))
                sock.setblocking(False)
                client.handle_connected(now=time.monotonic())
            elif isinstance(event, TunnelEstablished):
                assert event.settings.ipv4 is not None
                source = event.settings.ipv4.ip.packed
            elif isinstance(event, ProgressReported):
                result["progress"].append(event.message)
            elif isinstance(event, SessionRestarting | SessionEnded):
                return finish(event.reason)
        if sock is None:
            return finish("the client asked for no connection")
        for wire in client.data_to_send(now=now):
            ledger.count(ledger.sent_kids, wire)
            sock.send(wire)
        if source is not None:
            ledger.echo(client, source, now, sock.send)
        timer = client.get_timer()
        wait = 0.05 if timer is None else min(max(timer - time.monotonic(), 0.0), 0.05)
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            data = sock.recv(65536)
            ledger.count(ledger.received_kids, data)
            client.receive(data, now=time.monotonic())
            ledger.take_replies(client)
        timer = client.get_timer()
        if timer is not None and time.monotonic() >= timer:
            client.handle_timer(now=time.monotonic())
        if goal_reached_at is None and client.stats.renegotiations >= goal:
            goal_reached_at = time.monotonic()
        if goal_reached_at is not None and time.monotonic() - goal_reached_at >= SETTLE:
            client.close(now=time.monotonic())
            for wire in client.data_to_send(now=time.monotonic()):
                sock.send(wire)
            return finish(None)
    return finish("timed out")


def main() -> int:
    result = drive(sys.argv[1], int(sys.argv[2]))
    print(json.dumps(result))
    return 0 if "failure" not in result else 1


# --------------------------------------------------------------------------- the tests

if __name__ != "__main__":
    from tests.helpers.netns import NetnsPair, netns_pair_context
    from tests.helpers.openvpn import OpenVpnServer, Protection, Scenario
    from tests.helpers.pki import PkiFiles, make_pki, write_pki

    pytestmark = pytest.mark.interop

    REPO = Path(__file__).resolve().parents[2]
    PYTHON = str(REPO / ".venv" / "bin" / "python")

    @pytest.fixture(scope="module")
    def pki_files(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
        return write_pki(make_pki(), tmp_path_factory.mktemp("pki"))

    def drive_in(
        pair: NetnsPair, scenario: Scenario, files: PkiFiles, tmp: Path, goal: int
    ) -> dict[str, Any]:
        return run_driver(
            pair,
            scenario,
            files,
            tmp,
            str(goal),
            python=PYTHON,
            module="tests.interop.test_renegotiation",
            timeout=DRIVER_TIMEOUT + 10,
        )

    def new_key_lines(server: OpenVpnServer) -> list[str]:
        """One line per data channel key the server initialised (2.6 at verb 4)."""
        return [
            line
            for line in server.log_text().splitlines()
            if "Outgoing Data Channel: Cipher" in line
        ]

    def check_no_loss(result: dict[str, Any], server: OpenVpnServer) -> None:
        log = server.log_text()
        context = f"{result}\nserver log:\n{log[-4000:]}"
        assert "failure" not in result, context
        assert result["requests"] >= 20, context
        assert result["lost"] == [], context  # the tunnel never dropped a packet
        assert result["dropped"] == {}, context  # nor did we drop anything of the server's
        for complaint in ("TLS Error", "key IDs out of sync", "Decrypt error", "AUTH_FAILED"):
            assert complaint not in log, context

    def test_server_initiated_renegotiation(pki_files: PkiFiles, tmp_path: Path) -> None:
        scenario = Scenario(
            transport="udp",
            protection=Protection.TLS_CRYPT,
            extra_server=("reneg-sec 10",),
            extra_client=("hand-window 5",),
        )
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = drive_in(pair, scenario, pki_files, tmp_path, goal=2)
            check_no_loss(result, server)
            progress = result["progress"]
            for kid in (1, 2):
                assert f"server renegotiates keys (key id {kid})" in progress, result
                assert f"new data keys (key id {kid})" in progress, result
            assert not any("we renegotiate" in p for p in progress), result
            # Both sides carried traffic on every key id, the old one for a while after each
            # soft reset (the deferred switch), the new one afterwards.
            assert {0, 1, 2} <= set(map(int, result["sent_kids"])), result
            assert {0, 1, 2} <= set(map(int, result["received_kids"])), result
            log = server.log_text()
            assert log.count("TLS: soft reset") >= 2, log[-4000:]
            assert len(new_key_lines(server)) >= 3, log[-4000:]  # key ids 0, 1, 2

    @pytest.mark.parametrize(
        "trigger", ["reneg-sec 4", "reneg-pkts 40", "reneg-bytes 4000"], ids=lambda t: t.split()[0]
    )
    def test_client_initiated_renegotiation(
        trigger: str, pki_files: PkiFiles, tmp_path: Path
    ) -> None:
        scenario = Scenario(
            transport="udp",
            protection=Protection.TLS_AUTH,
            extra_server=("reneg-sec 0",),
            extra_client=(trigger, "hand-window 3"),  # we switch to a new key after 3 s
        )
        with (
            netns_pair_context() as pair,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, tmp_path / "server", pair.server_address
            ) as server,
        ):
            result = drive_in(pair, scenario, pki_files, tmp_path, goal=2)
            check_no_loss(result, server)
            progress = result["progress"]
            for kid in (1, 2):
                assert f"we renegotiate keys (key id {kid})" in progress, result
                assert f"new data keys (key id {kid})" in progress, result
            assert not any("server renegotiates" in p for p in progress), result
            assert {0, 1, 2} <= set(map(int, result["sent_kids"])), result
            assert {1, 2} <= set(map(int, result["received_kids"])), result
            log = server.log_text()
            assert log.count("TLS: soft reset") == 0, log[-4000:]  # not the server's doing
            assert len(new_key_lines(server)) >= 3, log[-4000:]


if __name__ == "__main__":
    sys.exit(main())
