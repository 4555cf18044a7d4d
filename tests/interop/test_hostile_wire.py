"""A live session against a hostile wire: forged packets are dropped, counted, and harmless.

Our client (`miragevpn-client`) runs a UDP session with the real OpenVPN 2.6 server (tls-auth,
then tls-crypt; AES-256-GCM). The session's packets are captured on the client's veth (AF_PACKET,
client namespace). Then, from the server namespace, bursts of forged datagrams are injected
toward the client's connected UDP socket with the server's exact address and port 1194 (raw IPv4
socket, headers built by `tests.helpers.inject`), one kind per burst:

    garbage           random bytes, random lengths
    truncated         every proper prefix (0 .. n-1 bytes) of a real data and a real control packet
    data flipped      real data packets with one byte flipped: the AEAD tag fails
    control flipped   real control packets with one byte flipped: the HMAC / tls-crypt tag fails
    data replayed     exact copies of real data packets
    control replayed  exact copies of real control packets (the handshake's)
    unknown opcode    real packets with opcode 0 or 12..31
    unknown key id    a real P_DATA packet with a key id the session does not have

During each burst the tunnel carries a ping and a checksummed TCP transfer; after it, a ping.
The client's statistics line (SIGUSR1) must show the burst counted under the expected reasons
only, and all of it but what the client's kernel itself dropped (UDP InErrors in the client
namespace, which also counts the tunnel traffic the client was too slow for; a burst the kernel
dropped nothing of must be counted exactly) — so a client that accepts these packets fails here.
The server must keep the one session throughout.

Everything stays inside the two namespaces this test creates.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.inject import (
    Datagram,
    Injector,
    UdpCapture,
    cycle,
    flip_one_byte,
    garbage,
    truncations,
    udp_kernel_drops,
    with_first_byte,
)
from tests.helpers.netns import netns_pair_context
from tests.helpers.openvpn import (
    SERVER_TUN_ADDRESS,
    TUNNEL_NETWORK,
    OpenVpnServer,
    Protection,
    Scenario,
    client_config,
)
from tests.helpers.ourclient import OurClient, engine_ready
from tests.helpers.pki import PkiFiles
from tests.helpers.traffic import assert_through_tunnel, ping, tcp_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not engine_ready(), reason="engine Client or config parser not landed"),
]

BURST = 200  # packets per kind
PACE = 0.002  # seconds between injected packets (a burst lasts ~0.5 s, next to live traffic)
TRANSFER = 256 * 1024  # bytes of the checksummed TCP transfer during each burst
P_DATA_V1, P_DATA_V2 = 6, 9
UNKNOWN_OPCODES = (0, *range(12, 32))

# The reasons of describe.describe_stats (the engine's, DecodeError & co. said in words).
MALFORMED = "malformed"
AUTHENTICATION = "failed authentication"
REPLAYED = "replayed"
EMPTY = "empty"
UNKNOWN_KEY_ID = "unknown key id"


@dataclass(frozen=True)
class Captured:
    """What the server sent our client during the handshake and the first pings."""

    data: list[bytes]  # P_DATA_V1/V2
    control: list[bytes]  # every other opcode (resets, control, acks)


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable[[Captured, random.Random], list[bytes]]
    allowed: frozenset[str]  # the reasons this burst may be counted under
    required: frozenset[str]  # the reasons that must grow
    few: frozenset[str] = frozenset()  # required only if the kernel dropped nothing: so few
    # packets of the burst are counted under these that the kernel may have dropped them all


def _unknown_opcode(c: Captured, rng: random.Random) -> list[bytes]:
    real = c.data + c.control
    return [
        with_first_byte(rng.choice(real), rng.choice(UNKNOWN_OPCODES), rng.randrange(8))
        for _ in range(BURST)
    ]


def _unknown_key_id(c: Captured, rng: random.Random) -> list[bytes]:
    return [
        with_first_byte(rng.choice(c.data), rng.choice((P_DATA_V1, P_DATA_V2)), rng.randrange(1, 8))
        for _ in range(BURST)
    ]


def _truncated(c: Captured, rng: random.Random) -> list[bytes]:
    control = min((p for p in c.control if len(p) >= 60), key=len)  # a short one: an ack
    return truncations(max(c.data, key=len)) + truncations(control)


KINDS = [
    Kind(
        "garbage",
        lambda c, rng: garbage(rng, BURST),
        frozenset({MALFORMED, AUTHENTICATION, UNKNOWN_KEY_ID}),
        frozenset({MALFORMED, AUTHENTICATION}),
        few=frozenset({UNKNOWN_KEY_ID}),  # 7 in 128: P_DATA_V1/V2 with a key id not 0
    ),
    Kind(
        "truncated",
        _truncated,
        frozenset({EMPTY, MALFORMED, AUTHENTICATION}),
        frozenset({MALFORMED, AUTHENTICATION}),
        few=frozenset({EMPTY}),  # the two 0-byte prefixes
    ),
    Kind(
        "data flipped",
        lambda c, rng: [flip_one_byte(p, rng) for p in cycle(c.data, BURST)],
        frozenset({AUTHENTICATION}),
        frozenset({AUTHENTICATION}),
    ),
    Kind(
        "control flipped",
        lambda c, rng: [flip_one_byte(p, rng) for p in cycle(c.control, BURST)],
        frozenset({AUTHENTICATION}),
        frozenset({AUTHENTICATION}),
    ),
    Kind(
        "data replayed",
        lambda c, rng: cycle(c.data, BURST),
        frozenset({REPLAYED}),
        frozenset({REPLAYED}),
    ),
    Kind(
        "control replayed",
        lambda c, rng: cycle(c.control, BURST),
        frozenset({REPLAYED}),
        frozenset({REPLAYED}),
    ),
    Kind("unknown opcode", _unknown_opcode, frozenset({MALFORMED}), frozenset({MALFORMED})),
    Kind(
        "unknown key id", _unknown_key_id, frozenset({UNKNOWN_KEY_ID}), frozenset({UNKNOWN_KEY_ID})
    ),
]

SCENARIOS = [
    Scenario(transport="udp", protection=Protection.TLS_AUTH, data_ciphers=("AES-256-GCM",)),
    Scenario(transport="udp", protection=Protection.TLS_CRYPT, data_ciphers=("AES-256-GCM",)),
]

# What the server logs when it loses or restarts a client instance.
SERVER_LOST_SESSION = ("Inactivity timeout", "SIGUSR1[soft", "connection-reset", "SIGTERM[soft")


def split_captured(datagrams: list[Datagram], server: tuple[str, int], client_ip: str) -> Captured:
    from_server = [d for d in datagrams if d.src == server and d.dst[0] == client_ip]
    payloads = [d.payload for d in from_server if d.payload]
    data = [p for p in payloads if p[0] >> 3 in (P_DATA_V1, P_DATA_V2)]
    control = [p for p in payloads if p[0] >> 3 not in (P_DATA_V1, P_DATA_V2)]
    assert data and control, f"captured {len(data)} data and {len(control)} control packets"
    return Captured(data, control)


def client_port(datagrams: list[Datagram], server: tuple[str, int], client_ip: str) -> int:
    ports = {d.src[1] for d in datagrams if d.dst == server and d.src[0] == client_ip}
    assert len(ports) == 1, f"the client used source ports {ports}"
    return ports.pop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.protection.value)
def test_hostile_wire(pki_files: PkiFiles, workdir: Path, scenario: Scenario) -> None:
    rng = random.Random(f"hostile-wire-{scenario.label}")  # the same packets on every run
    report: list[str] = []
    started = time.monotonic()
    with netns_pair_context() as pair:
        server_address = (str(pair.server_address), scenario.port)
        client_ip = str(pair.client_address)
        config = client_config(scenario, pki_files, pair.server_address, real=False)
        with (
            UdpCapture.start(pair.client, pair.link.b_if) as capture,
            OpenVpnServer.start(
                pair.server, scenario, pki_files, workdir, pair.server_address
            ) as server,
            OurClient.start(pair.client, config, workdir) as client,
        ):
            client.wait_tunnel_up()
            ping(pair.client, SERVER_TUN_ADDRESS, count=2)
            seen = capture.stop()  # from here on, what crosses the veth includes our forgeries
            captured = split_captured(seen, server_address, client_ip)
            target = (client_ip, client_port(seen, server_address, client_ip))

            with Injector.open(pair.server) as injector, ThreadPoolExecutor(1) as pool:
                for kind in KINDS:
                    before, kernel_before = client.stats(), udp_kernel_drops(pair.client)
                    payloads = kind.build(captured, rng)
                    burst = pool.submit(
                        injector.send_burst, server_address, target, payloads, pace=PACE
                    )
                    # during the burst: the tunnel carries a ping and a checksummed transfer
                    ping(pair.client, SERVER_TUN_ADDRESS, count=3)
                    transfer = tcp_transfer(
                        pair.server, pair.client, SERVER_TUN_ADDRESS, size=TRANSFER
                    )
                    assert_through_tunnel(transfer, str(TUNNEL_NETWORK))
                    sent = burst.result(timeout=10)
                    time.sleep(0.1)  # the last forgeries reach the client
                    ping(pair.client, SERVER_TUN_ADDRESS, count=2)  # and after it
                    assert client.proc.poll() is None, f"{kind.name}: client died\n{client.tail()}"

                    after = client.stats()
                    kernel_lost = udp_kernel_drops(pair.client) - kernel_before  # any UDP, ours too
                    grown = after.drops_since(before)
                    counted = sum(grown.values())
                    report.append(
                        f"{scenario.protection.value:9} {kind.name:16} sent {sent:3}, "
                        f"kernel dropped {kernel_lost:3}, counted {counted:3}: {grown}"
                    )
                    assert set(grown) <= kind.allowed, f"{kind.name}: counted as {grown}"
                    required = kind.required | (kind.few if kernel_lost == 0 else frozenset())
                    assert required <= set(grown), f"{kind.name}: counted as {grown}"
                    assert sent - kernel_lost <= counted <= sent, (
                        f"{kind.name}: {sent} sent, {kernel_lost} dropped by the kernel, "
                        f"{counted} counted by the client: {grown}"
                    )
                    assert after.packets_in - before.packets_in >= sent - kernel_lost

            # one session from start to end, on both sides
            assert client.log_text().count("tunnel up:") == 1, client.tail()
            assert "session lost" not in client.log_text(), client.tail()
            assert server.proc is not None and server.proc.poll() is None
            server_log = server.log_text()
            lost = [word for word in SERVER_LOST_SESSION if word in server_log]
            assert not lost, f"the server dropped our session ({lost}):\n{server_log[-3000:]}"
            assert server_log.count("Peer Connection Initiated") == 1, server_log[-3000:]
            assert client.stop() == 0, client.tail()
            assert len(client.stats_lines()) == 2 * len(KINDS) + 1, client.tail()  # + at exit
    print("\n".join(report))
    print(f"{scenario.label}: {time.monotonic() - started:.1f}s")
