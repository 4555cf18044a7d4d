"""flush_connections empties the conntrack table (IPv4 and IPv6) of the calling thread's
namespace only. pyroute2 (a test dependency only) lists the entries, as a second opinion."""

from __future__ import annotations

import socket

import pytest
from pyroute2 import Conntrack

from qubes_miragevpn.gateway.conntrack import flush_connections
from tests.helpers.netns import NetnsPair

pytestmark = pytest.mark.netns
TRACKING = """
table inet tracking {
    chain output { type filter hook output priority 0; ct state new counter; }
}
"""


def tracked() -> list[tuple[str, int]]:
    ct = Conntrack()
    try:
        return [(e.tuple_orig.daddr, e.tuple_orig.dport) for e in ct.dump_entries()]
    finally:
        ct.close()


def test_flush_forgets_tracked_flows_in_this_namespace_only(netns_pair: NetnsPair) -> None:
    client, server = netns_pair.client, netns_pair.server
    target = (str(netns_pair.server_address), 4242)

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"tracked", target)

    def send6() -> None:  # to itself, over IPv6
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"tracked", ("::1", 4243))

    for ns in (client, server):  # a namespace tracks connections once a ruleset asks for it
        ns.run(["nft", "-f", "-"], input=TRACKING)
    client.run(["ip", "link", "set", "lo", "up"])
    client.call(send)
    client.call(send6)
    server.call(send)  # to itself: tracked in the server's namespace
    assert target in client.call(tracked)
    server_before = server.call(tracked)
    assert server_before
    assert client.call(flush_connections) >= 2  # IPv4 and IPv6
    assert target not in client.call(tracked)
    assert client.call(flush_connections) == 0  # nothing left, of either family
    assert server.call(tracked) == server_before
