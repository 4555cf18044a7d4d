"""What the in-process renegotiation drivers share (tests/interop/test_renegotiation.py,
tests/interop/test_dyn_tls_crypt.py).

Each of those modules runs itself as a program in the client namespace: it drives the engine's
`Client` over a socket of its own until some renegotiations are done and prints one JSON line.
`EchoLedger` is the ping bookkeeping both do (an ICMP echo request to the server's tun address
every `interval` seconds, the replies, the key ids of the data packets both ways) and builds
the result; `run_driver` is the test side: it writes the client's config, runs the program
(bounded) and reads its JSON line.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers.ippacket import icmp_echo_request, is_echo_reply

if TYPE_CHECKING:
    from miragevpn.client import Client
    from tests.helpers.netns import NetnsPair
    from tests.helpers.openvpn import Scenario
    from tests.helpers.pki import PkiFiles

SERVER_TUN = socket.inet_aton("10.8.0.1")
REPLY_WINDOW = 40  # a reply is matched against the newest this many echo requests


def is_data(packet: bytes) -> bool:
    """P_DATA_V1 / P_DATA_V2 (pings too), by the opcode in the first byte."""
    return bool(packet) and packet[0] >> 3 in (6, 9)


class EchoLedger:
    """Echo requests sent and replies seen, and the key ids of the data packets both ways."""

    def __init__(self, interval: float, reply_grace: float) -> None:
        self.interval = interval
        self.reply_grace = reply_grace  # a request younger than this at the end may be unanswered
        self.sent_kids: collections.Counter[int] = collections.Counter()
        self.received_kids: collections.Counter[int] = collections.Counter()
        self.requests: dict[int, float] = {}  # seq -> sent at (monotonic)
        self.replies: set[int] = set()
        self.ident, self.seq = os.getpid() & 0xFFFF, 0
        self.next_echo = 0.0

    def count(self, counter: collections.Counter[int], packet: bytes) -> None:
        """Count `packet`'s key id in `counter` if it is a data packet."""
        if is_data(packet):
            counter[packet[0] & 7] += 1

    def echo(
        self,
        client: Client,
        source: bytes,
        now: float,
        send: Callable[[bytes], object],
        framing: int = 0,
    ) -> None:
        """Send the next echo request through the tunnel if one is due (`framing`: bytes of
        length prefix before the packet, 2 over TCP)."""
        if time.monotonic() < self.next_echo:
            return
        self.seq += 1
        request = icmp_echo_request(source, SERVER_TUN, self.ident, self.seq)
        wire = client.encrypt_tunnel_packet(request, now=now)
        if wire is not None:
            self.count(self.sent_kids, wire[framing:])
            send(wire)
            self.requests[self.seq] = time.monotonic()
        self.next_echo = time.monotonic() + self.interval

    def take_replies(self, client: Client) -> None:
        """Match the packets the client decrypted against the newest echo requests."""
        for packet in client.tunnel_packets():
            for s in range(max(self.seq - REPLY_WINDOW, 1), self.seq + 1):
                if is_echo_reply(packet, self.ident, s):
                    self.replies.add(s)

    def finish(self, result: dict[str, Any], client: Client, failure: str | None) -> dict[str, Any]:
        """`result` with the failure (if any), the echo counts, the requests lost (older than
        the grace), the key ids both ways and the client's renegotiations and drops."""
        if failure is not None:
            result["failure"] = failure
        cutoff = time.monotonic() - self.reply_grace
        result["requests"] = len(self.requests)
        result["lost"] = sorted(
            s for s, at in self.requests.items() if s not in self.replies and at < cutoff
        )
        result["replies"] = len(self.replies)
        result["sent_kids"] = dict(self.sent_kids)
        result["received_kids"] = dict(self.received_kids)
        result["renegotiations"] = client.stats.renegotiations
        result["dropped"] = {r.value: n for r, n in client.stats.dropped.items()}
        return result


def run_driver(
    pair: NetnsPair,
    scenario: Scenario,
    files: PkiFiles,
    tmp: Path,
    *args: str,
    python: str,
    module: str,
    timeout: float,
) -> dict[str, Any]:
    """Write our client's config for `scenario` to tmp/engine-client.conf, run `python -m
    module CONFIG args` in the client namespace (bounded by `timeout`), and
    return the JSON of its last stdout line with its "returncode"."""
    from tests.helpers.openvpn import client_config

    config = tmp / "engine-client.conf"
    config.write_text(client_config(scenario, files, pair.server_address, real=False))
    completed = pair.client.run(
        [python, "-m", module, str(config), *args], timeout=timeout, check=False
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"driver printed nothing; stderr:\n{completed.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["returncode"] = completed.returncode
    return result
