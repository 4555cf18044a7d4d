"""Test doubles for the runtime: a scripted engine client, a tun device and a network configurator.

`ScriptedClient` is an honest double of the documented `Client` surface (docs/ARCHITECTURE.md):
same methods, same event types, same rules (IO only when asked by an event, one timer, `close`
ends in `SessionEnded`), over a toy wire protocol that a test can play the server of:

    client → server   b"HELLO" after connecting, b"PING" on each keepalive deadline,
                      b"D" + packet for each tunnel packet, b"EXIT" on close()
    server → client   b"WELCOME" (tunnel up), b"D" + packet (to the tun), b"RESTART" (session
                      lost, reconnect after `retry_in`), b"HALT" (terminal error), b"CODE?[ TEXT]"
                      (before WELCOME: a one-time code is asked, ChallengeRequested; the
                      answer, kept in `answers`, starts a new connection: b"HELLO " + code)

Like the engine, it keeps `stats` (the engine's counter names: packets/bytes in and out, tunnel
packets, drops by reason); a datagram it does not understand is dropped as "unknown packet".

`FakeTun` is a SOCK_DGRAM socketpair (a real fd for `add_reader`; one datagram = one packet; a
packet the peer has no room for is dropped and counted, like the real tun's);
`FakeNetwork` records `apply`/`revert` calls instead of touching the kernel (the async
`NetworkConfigurator` of `qubes_miragevpn.netlink`); `refuse` makes `apply` report changes as
skipped, as the kernel refusing a pushed route would.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from miragevpn.config.model import Config, Transport
from miragevpn.errors import RemoteProtocolError
from miragevpn.events import (
    ChallengeRequested,
    ConnectionRequested,
    DisconnectionRequested,
    Event,
    ProgressReported,
    ProxyRoute,
    ResolutionRequested,
    SessionEnded,
    SessionRestarting,
    TlsEstablished,
    TunnelEstablished,
    TunnelSettings,
)
from qubes_miragevpn.netlink import ApplyReport, Skipped

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SETTINGS = TunnelSettings(
    ipv4=ipaddress.IPv4Interface("10.8.0.2/24"),
    ipv4_peer=None,
    ipv6=None,
    mtu=1500,
    routes=(),
    redirect_gateway_ipv4=False,
    redirect_gateway_ipv6=False,
    remote_address=ipaddress.ip_address("127.0.0.1"),
    dhcp_options=(),
    cipher="AES-256-GCM",
    key_derivation="tls-ekm",
)


@dataclass
class FakeStats:
    """The counters of the engine's `client.stats`, by the same names."""

    packets_received: int = 0
    packets_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    tunnel_packets_in: int = 0
    tunnel_packets_out: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


class ScriptedClient:
    def __init__(
        self,
        config: Config,
        now: float,
        *,
        ping_interval: float = 0.2,
        retry_in: float = 0.1,
        settings: TunnelSettings = SETTINGS,
    ) -> None:
        self.config = config
        self.ping_interval = ping_interval
        self.retry_in = retry_in
        self.settings = settings
        self.events: deque[Event] = deque()
        self.outbox: list[bytes] = []
        self.inbox: list[bytes] = []  # decrypted tunnel packets not yet drained
        self.state = "resolving"
        self.deadline: float | None = None
        self.calls: list[str] = []
        self.answers: list[str] = []
        self.stats = FakeStats()
        self._request_resolution()

    # ---- the documented surface

    def receive(self, data: bytes, now: float) -> None:
        self.calls.append("receive")
        self.stats.packets_received += 1
        self.stats.bytes_received += len(data)
        if self.state == "connected" and data == b"WELCOME":
            self.state = "established"
            self.events.append(TlsEstablished(version="TLSv1.3", cipher="X", peer_subject="CN=s"))
            self.events.append(TunnelEstablished(settings=self.settings))
            self.deadline = now + self.ping_interval
        elif self.state == "established" and data.startswith(b"D"):
            self.inbox.append(data[1:])
            self.stats.tunnel_packets_in += 1
        elif self.state == "established" and data == b"RESTART":
            self.state = "waiting"
            self.events.append(SessionRestarting(reason="server restart", retry_in=self.retry_in))
            self.events.append(DisconnectionRequested(reason="server restart"))
            self.deadline = now + self.retry_in
        elif self.state == "connected" and data.startswith(b"CODE?"):
            self.state = "asking"
            self.events.append(DisconnectionRequested(reason="a code is asked"))
            text = data[6:].decode() or "Enter code"
            self.events.append(ChallengeRequested(text=text, echo=False, dynamic=True))
        elif data == b"HALT":
            self.state = "ended"
            self.events.append(DisconnectionRequested(reason="HALT"))
            self.events.append(
                SessionEnded(reason="server halted", error=RemoteProtocolError("HALT"))
            )
            self.deadline = None
        else:  # anything else: a bad packet, dropped and counted (as the engine does)
            self.stats.drop("unknown packet")

    def data_to_send(self, now: float) -> list[bytes]:
        out, self.outbox = self.outbox, []
        self.stats.packets_sent += len(out)
        self.stats.bytes_sent += sum(map(len, out))
        return out

    def encrypt_tunnel_packet(self, ip_packet: bytes, now: float) -> bytes | None:
        if self.state != "established":
            return None
        self.stats.tunnel_packets_out += 1
        return b"D" + ip_packet

    def tunnel_packets(self) -> list[bytes]:
        out, self.inbox = self.inbox, []
        return out

    def get_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.calls.append("timer")
        if self.deadline is None or now < self.deadline:
            return
        if self.state == "established":
            self.outbox.append(b"PING")
            self.deadline = now + self.ping_interval
        elif self.state == "waiting":
            self.deadline = None
            self._request_resolution()
        elif self.state == "closing":
            self.state = "ended"
            self.deadline = None
            self.events.append(SessionEnded(reason="closed"))

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None

    def handle_resolved(self, addresses: Sequence[IPAddress], now: float) -> None:
        self.calls.append("resolved")
        remote, proxy = self.config.remotes[0], self.config.proxy
        self.state = "connecting"
        if proxy is not None:  # as the engine: the socket goes to the proxy (remotes.py)
            via = ProxyRoute(proxy=proxy, host=remote.host, port=remote.port)
            request = ConnectionRequested(
                address=addresses[0], port=proxy.port, transport=Transport.TCP, via=via
            )
        else:
            request = ConnectionRequested(
                address=addresses[0], port=remote.port, transport=remote.proto.transport
            )
        self.events.append(request)

    def handle_resolve_failed(self, now: float) -> None:
        self.state = "ended"
        self.events.append(SessionEnded(reason="cannot resolve", error=RemoteProtocolError("dns")))

    def handle_connected(self, now: float) -> None:
        self.calls.append("connected")
        self.state = "connected"
        self.events.append(ProgressReported(message="TLS handshake"))
        self.outbox.append(b"HELLO " + self.answers[-1].encode() if self.answers else b"HELLO")

    def handle_connection_failed(self, now: float) -> None:
        self.calls.append("connection_failed")
        self.state = "waiting"
        self.events.append(SessionRestarting(reason="connection failed", retry_in=self.retry_in))
        self.deadline = now + self.retry_in

    def handle_connection_lost(self, now: float) -> None:
        self.calls.append("connection_lost")
        self.state = "waiting"
        self.events.append(SessionRestarting(reason="connection lost", retry_in=self.retry_in))
        self.deadline = now + self.retry_in

    def answer_challenge(self, response: str, *, now: float) -> None:
        self.calls.append("answer")
        if self.state != "asking":
            return
        self.answers.append(response)
        self._request_resolution()

    def close(self, now: float) -> None:
        self.calls.append("close")
        if self.state == "ended":
            return
        if self.state == "asking":
            self.state = "ended"
            self.events.append(SessionEnded(reason="closed"))
            return
        self.outbox.append(b"EXIT")
        self.state = "closing"
        self.deadline = now + 0.05  # explicit-exit-notify: give the datagram time to leave

    # ---- helpers

    def _request_resolution(self) -> None:
        self.state = "resolving"
        remote, proxy = self.config.remotes[0], self.config.proxy
        host = proxy.host if proxy is not None else remote.host
        self.events.append(ResolutionRequested(host=host, family=remote.proto.family))


class FakeTun:
    """A tun double: the application holds one end of a datagram socketpair, the test the other."""

    def __init__(self, name: str) -> None:
        self._ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ours.setblocking(False)
        self.peer.settimeout(5)
        self._name = name
        self.closed = False
        self.dropped = 0

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._ours.fileno()

    def read(self) -> bytes | None:
        try:
            return self._ours.recv(65535)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            self._ours.send(packet)
        except BlockingIOError:  # the peer is not reading: dropped, as the real Tun does
            self.dropped += 1

    def close(self) -> None:
        self.closed = True
        self._ours.close()
        self.peer.close()


@dataclass
class FakeNetwork:
    """Records what the application asks of the network instead of doing it."""

    tun: FakeTun | None = None
    applied: list[tuple[str, TunnelSettings]] = field(default_factory=list)
    allow_routes: list[bool] = field(default_factory=list)
    refuse: tuple[Skipped, ...] = ()
    reverts: int = 0
    closed: bool = False

    def open_tun(self, name: str) -> FakeTun:
        assert self.tun is None, "the application opens one tun device and keeps it"
        self.tun = FakeTun(name.replace("%d", "0"))
        return self.tun

    async def apply(
        self, ifname: str, settings: TunnelSettings, *, allow_routes: bool = True
    ) -> ApplyReport:
        self.applied.append((ifname, settings))
        self.allow_routes.append(allow_routes)
        return ApplyReport(applied=("everything else",), skipped=self.refuse)

    async def revert(self) -> None:
        self.reverts += 1

    async def close(self) -> None:
        await self.revert()
        self.closed = True
