"""Remote selection, remote-random and connect-retry back-off."""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import itertools

import pytest

from miragevpn.config.model import AddressFamily, Config, Proto, Remote, Transport
from miragevpn.errors import ConfigError
from miragevpn.remotes import (
    Advance,
    RemoteSelector,
    RetriesExhausted,
    shuffled,
    uniform_below,
    usable_addresses,
)

A = Remote("a.example", 1194)
B = Remote("198.51.100.2", 443, Proto(Transport.TCP))
C = Remote("c.example", 1195, Proto(Transport.UDP, AddressFamily.IPV6))
V4 = ipaddress.IPv4Address("192.0.2.1")
V4B = ipaddress.IPv4Address("192.0.2.2")
V6 = ipaddress.IPv6Address("2001:db8::1")


def counter_rng(seed: bytes = b"") -> object:
    """A deterministic rng(n) -> bytes (SHA-256 in counter mode)."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


def test_config_order_and_literal_addresses() -> None:
    selector = RemoteSelector(Config(remotes=(A, B)), counter_rng())  # type: ignore[arg-type]
    assert selector.target().remote == A
    assert selector.target().address is None  # resolve a.example first
    assert selector.resolved([V4, V6, V4B, V4]) == V4  # the resolver's order, no duplicates
    assert selector.target().address == V4
    assert selector.failed() == 1.0
    assert selector.target().address == V6  # next address of the same remote, either family
    selector.failed()
    assert selector.target().address == V4B
    selector.failed()
    target = selector.target()
    assert target.remote == B
    assert target.address == ipaddress.IPv4Address("198.51.100.2")  # a literal: no resolution
    selector.failed()
    assert selector.target().remote == A  # wraps around
    assert selector.target().address is None  # and resolves again


def test_family_filter() -> None:
    assert usable_addresses([V4, V6], AddressFamily.IPV6) == [V6]
    assert usable_addresses([V6, V4], AddressFamily.IPV4) == [V4]
    # proto udp/tcp: both families, as getaddrinfo sorted them (OpenVPN 2.6 does not re-sort)
    assert usable_addresses([V6, V4, V6], AddressFamily.ANY) == [V6, V4]
    assert usable_addresses([V4, V6], AddressFamily.ANY) == [V4, V6]
    selector = RemoteSelector(Config(remotes=(C,)), counter_rng())  # type: ignore[arg-type]
    assert selector.resolved([V4]) is None


def test_advance_kinds() -> None:
    selector = RemoteSelector(Config(remotes=(A, B)), counter_rng())  # type: ignore[arg-type]
    selector.resolved([V4, V4B])
    selector.failed(Advance.NO)
    assert selector.target().address == V4
    selector.failed(Advance.REMOTE)
    assert selector.target().remote == B


def test_backoff_doubles_after_five_rounds_and_is_capped() -> None:
    config = Config(remotes=(A, B), connect_retry=2.0, connect_retry_max_delay=60.0)
    selector = RemoteSelector(config, counter_rng())  # type: ignore[arg-type]
    pauses = [selector.failed() for _ in range(20)]
    # attempts//2 - 4 > 0 from the 10th failure on: 2<<1, 2<<1, 2<<2, 2<<2, ... capped at 60
    assert pauses[:9] == [2.0] * 9
    assert pauses[9:15] == [4.0, 4.0, 8.0, 8.0, 16.0, 16.0]
    assert pauses[15:] == [32.0, 32.0, 60.0, 60.0, 60.0]
    selector.succeeded()
    assert selector.failed() == 2.0


def test_server_backoff_raises_the_pause_once() -> None:
    selector = RemoteSelector(Config(remotes=(A,)), counter_rng())  # type: ignore[arg-type]
    assert selector.failed(backoff=30.0) == 30.0
    assert selector.failed() == 1.0


def test_connect_retry_max() -> None:
    selector = RemoteSelector(
        Config(remotes=(A, B), connect_retry_max=2),
        counter_rng(),  # type: ignore[arg-type]
    )
    for _ in range(3):
        selector.failed()
    with pytest.raises(RetriesExhausted, match="connect-retry-max"):
        selector.failed()


def test_resolv_retry_bounds_resolution_failures() -> None:
    selector = RemoteSelector(Config(remotes=(A,), resolv_retry=10.0), counter_rng())  # type: ignore[arg-type]
    selector.resolution_failed(100.0)
    selector.resolution_failed(105.0)
    with pytest.raises(RetriesExhausted, match="resolv-retry"):
        selector.resolution_failed(110.0)


def test_restart_after_success_keeps_the_remote() -> None:
    selector = RemoteSelector(Config(remotes=(A, B)), counter_rng())  # type: ignore[arg-type]
    selector.resolved([V4])
    selector.succeeded()
    assert selector.restarted() == 1.0
    assert selector.target() == type(selector.target())(A, None)


def test_no_remote_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RemoteSelector(Config(), counter_rng())  # type: ignore[arg-type]


def test_remote_random_uses_the_rng() -> None:
    remotes = tuple(Remote(f"r{i}.example") for i in range(5))
    config = Config(remotes=remotes, remote_random=True)
    orders = {RemoteSelector(config, counter_rng(bytes([s]))).remotes for s in range(20)}  # type: ignore[arg-type]
    assert len(orders) > 1
    assert all(sorted(o, key=lambda r: r.host) == list(remotes) for o in orders)


def test_shuffle_is_unbiased() -> None:
    rng = counter_rng(b"shuffle")
    items = tuple(Remote(h) for h in "abc")
    counts = collections.Counter(shuffled(items, rng) for _ in range(6000))  # type: ignore[arg-type]
    assert len(counts) == 6
    assert all(800 < n < 1200 for n in counts.values())  # ~1000 each, > 8 sigma margin


def test_uniform_below_rejects_the_biased_tail() -> None:
    # 2**64 - 1 lies in the biased tail for bound 3; the next draw is used instead.
    draws = iter([b"\xff" * 8, (7).to_bytes(8, "big")])
    assert uniform_below(lambda n: next(draws), 3) == 1


def test_remote_random_hostname_puts_a_fresh_label_before_each_lookup() -> None:
    config = Config(remotes=(A, B), remote_random_hostname=True)
    selector = RemoteSelector(config, counter_rng(b"label"))  # type: ignore[arg-type]
    first, second = selector.lookup_name(), selector.lookup_name()
    for name in (first, second):
        label, rest = name.split(".", 1)
        assert rest == "a.example"
        assert len(label) == 12 and int(label, 16) >= 0  # 6 random bytes, as hex
    assert first != second  # a new label per lookup: no DNS cache answers it
    assert RemoteSelector(Config(remotes=(A,)), counter_rng()).lookup_name() == "a.example"  # type: ignore[arg-type]
    selector.failed(Advance.REMOTE)
    assert selector.target().address is not None  # a literal address is never looked up


def test_a_proxy_is_resolved_and_dialled_the_server_name_goes_to_it() -> None:
    from miragevpn.config.model import SocksProxy
    from miragevpn.events import ProxyRoute

    tcp = Proto(Transport.TCP)
    proxy = SocksProxy("tor-gateway", 9050)
    config = Config(
        remotes=(Remote("vpn.example", 443, tcp),), proxy=proxy, remote_random_hostname=True
    )
    selector = RemoteSelector(config, counter_rng())
    assert selector.target().address is None
    assert selector.lookup_name() == "tor-gateway"  # no random label: the proxy's own name
    address = selector.resolved([ipaddress.ip_address("10.152.152.10")])
    assert address is not None
    request = selector.connection_request(address)
    assert (request.address, request.port, request.transport) == (address, 9050, Transport.TCP)
    assert request.via == ProxyRoute(proxy=proxy, host="vpn.example", port=443)
    literal = Config(remotes=(Remote("vpn.example", 443, tcp),), proxy=SocksProxy("10.0.0.9"))
    assert RemoteSelector(literal, counter_rng()).target().address == ipaddress.ip_address(
        "10.0.0.9"
    )
    plain = RemoteSelector(Config(remotes=(Remote("10.0.0.1", 1194),)), counter_rng())
    request = plain.connection_request(ipaddress.ip_address("10.0.0.1"))
    assert request.via is None and request.port == 1194 and request.transport is Transport.UDP
