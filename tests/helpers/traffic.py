"""Real traffic through a tunnel: ping and a checksummed TCP echo transfer between namespaces."""

from __future__ import annotations

import ipaddress
import json
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.netns import Netns, stop_process, wait_until

TCP_ECHO = str(Path(__file__).with_name("tcp_echo.py"))
MiB = 1 << 20


PING_ROUNDS = 2  # a round of pings with a loss is repeated once (see ping)


def ping(ns: Netns, address: str, *, count: int = 3, timeout: float = 20.0) -> None:
    """`count` pings from `ns` to `address` must all be answered (ping -6 for IPv6).

    A round with a loss is repeated once, and the second round must be perfect: one datagram
    lost on a loaded machine (CI runs two suites at once) is not a failure of the tunnel, a
    tunnel that drops packets fails both rounds. Tests that need "no packet lost" count their
    own pings (e.g. the renegotiation tests)."""
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", address]
    if ":" in address:
        argv.insert(1, "-6")
    rounds = []
    for _ in range(PING_ROUNDS):
        result = ns.run(argv, timeout=timeout, check=False)
        rounds.append(result.stdout)
        if result.returncode == 0 and f" {count} received" in result.stdout:
            return
    raise AssertionError(f"ping {address} from {ns.name} lost packets twice:\n" + "\n".join(rounds))


@dataclass(frozen=True)
class Transfer:
    peer: str  # the client address the server saw (proves which path the bytes took)
    bytes: int
    seconds: float


def tcp_transfer(
    server_ns: Netns,
    client_ns: Netns,
    address: str,
    *,
    port: int = 5001,
    size: int = MiB,
    timeout: float = 60.0,
    compressible: bool = False,
) -> Transfer:
    """Send `size` random bytes from client_ns to an echo server on `address` in server_ns.

    Asserts that what the server received and what came back match what was sent (sha256).
    `compressible`: a random 64-byte block repeated instead (what compression shrinks)."""
    server = server_ns.spawn(
        [sys.executable, TCP_ECHO, "server", address, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 10.0)
        assert ready, "echo server did not start within 10s"
        listening = server.stdout.readline().decode().strip()
        assert listening == "listening", f"echo server did not start: {server.stderr}"
        client = client_ns.run(
            [sys.executable, TCP_ECHO, "client", address, str(port), str(size)]
            + (["compressible"] if compressible else []),
            timeout=timeout,
        )
        out, _ = server.communicate(timeout=timeout)
    finally:
        stop_process(server)
    sent = json.loads(client.stdout)
    served = json.loads(out)
    assert served["received"] == size, f"server got {served['received']} of {size} bytes"
    assert served["sha256"] == sent["sent_sha256"], "bytes corrupted on the way to the server"
    assert sent["bytes"] == size, f"echo returned {sent['bytes']} of {size} bytes"
    assert sent["echo_sha256"] == sent["sent_sha256"], "bytes corrupted on the way back"
    return Transfer(peer=served["peer"], bytes=size, seconds=sent["seconds"])


def assert_through_tunnel(transfer: Transfer, network: str) -> None:
    """The server saw our tunnel address as the peer: the bytes crossed the tunnel."""
    assert ipaddress.ip_address(transfer.peer) in ipaddress.ip_network(network), (
        f"peer {transfer.peer} is not in the tunnel network {network}"
    )


__all__ = ["MiB", "Transfer", "assert_through_tunnel", "ping", "tcp_transfer", "wait_until"]
