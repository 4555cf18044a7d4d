"""Engine scenario helpers: a client against the in-memory server (miniserver.py).

Time is a plain float the tests move forward (`T0` on, monotonic); the clients' wall clock
reads a fixed `WALL`; randomness is a counter. Shared by the client, key and control tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from miragevpn.client import Client
from miragevpn.config.model import Config, Remote, Secret
from miragevpn.events import Event
from tests.helpers.pki import Pki
from tests.miragevpn.miniserver import MiniServer

T0 = 1_700_000_000.0  # the tests' monotonic clock starts here (any origin would do)
WALL = 1_800_000_000.0  # Unix time: what the clients' wall clock reads (replay ids' time field)


def wall_clock() -> float:
    return WALL


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: bytes(next(counter) % 255 + 1 for _ in range(n))


def make_config(pki: Pki, **changes: object) -> Config:
    values: dict[str, object] = {
        "client": True,
        "pull": True,
        "tls_client": True,
        "remotes": (Remote("192.0.2.1", 1194),),
        "ca": pki.ca.cert_pem,
        "cert": pki.client.cert_pem,
        "remote_cert_tls_server": True,
    }
    values.update(changes)
    values.setdefault("key", Secret(pki.client.key_pem.encode()))
    return Config(**values)  # type: ignore[arg-type]


def drain(client: Client) -> list[Event]:
    events = []
    for _ in range(100):
        event = client.next_event()
        if event is None:
            break
        events.append(event)
    return events


def exchange(client: Client, server: MiniServer, now: float, rounds: int = 20) -> None:
    """Shuttle packets both ways until both sides are quiet (bounded)."""
    for _ in range(rounds):
        moved = False
        for wire in client.data_to_send(now=now):
            server.receive(wire, now)
            moved = True
        for wire in server.to_send(now):
            client.receive(wire, now=now)
            moved = True
        if not moved:
            return


def established(pki: Pki, **changes: object) -> tuple[Client, MiniServer, list[Event]]:
    client = Client(make_config(pki, **changes), rng=counter_rng(), now=T0, wall_clock=wall_clock)
    client.handle_connected(now=T0)
    server = MiniServer(pki)
    exchange(client, server, T0)
    return client, server, drain(client)
