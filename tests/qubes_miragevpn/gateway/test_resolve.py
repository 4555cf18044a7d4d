"""The daemon's own stub resolver (gateway/resolve.py): codec, and a query over a real socket."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading

import pytest

from miragevpn.config.model import AddressFamily, Config, Proto, Remote, SocksProxy, Transport
from qubes_miragevpn.gateway.resolve import (
    QTYPE_A,
    QTYPE_AAAA,
    ResolveError,
    decode_answers,
    encode_query,
    hostnames,
    resolve,
    with_addresses,
)
from tests.helpers.netns import Netns


def test_query_is_a_standard_recursive_question() -> None:
    # RFC 1035 4.1: id 0x1234, flags RD, one question; vpn.example.test IN A
    assert encode_query("vpn.example.test.", QTYPE_A, 0x1234) == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        b"\x03vpn\x07example\x04test\x00\x00\x01\x00\x01"
    )
    with pytest.raises(ResolveError):
        encode_query("a..b", QTYPE_A, 1)
    with pytest.raises(ResolveError):
        encode_query("x" * 64 + ".test", QTYPE_A, 1)


def answer(query: bytes, records: list[tuple[int, bytes]], rcode: int = 0) -> bytes:
    """A response to `query` whose answers use a compression pointer to the question name."""
    header = struct.pack("!HHHHHH", int.from_bytes(query[:2], "big"), 0x8180 | rcode, 1,
                         len(records), 0, 0)  # fmt: skip
    body = query[12:]
    for rtype, rdata in records:
        body += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return header + body


def test_answers_are_decoded_and_other_types_skipped() -> None:
    query = encode_query("vpn.example.test", QTYPE_A, 7)
    cname = (5, b"\x03srv\xc0\x0c")
    reply = answer(
        query, [cname, (QTYPE_A, bytes([198, 51, 100, 1])), (QTYPE_A, b"\x01\x02\x03\x04")]
    )
    assert decode_answers(reply, 7, QTYPE_A) == [
        ipaddress.ip_address("198.51.100.1"),
        ipaddress.ip_address("1.2.3.4"),
    ]
    six = answer(encode_query("v", QTYPE_AAAA, 8), [(QTYPE_AAAA, bytes(15) + b"\x01")])
    assert decode_answers(six, 8, QTYPE_AAAA) == [ipaddress.ip_address("::1")]


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"\x00\x07", "too short"),
        (answer(encode_query("v", QTYPE_A, 9), []), "not an answer"),  # other id
        (answer(encode_query("v", QTYPE_A, 7), [], rcode=3), "NXDOMAIN"),
        (answer(encode_query("v", QTYPE_A, 7), [], rcode=5), "refused"),
        (answer(encode_query("v", QTYPE_A, 7), [(QTYPE_A, b"\x01\x02\x03\x04")])[:-2], "truncated"),
    ],
)
def test_bad_responses_are_our_error(reply: bytes, words: str) -> None:
    with pytest.raises(ResolveError, match=words):
        decode_answers(reply, 7, QTYPE_A)


def test_hostname_remotes_are_replaced_by_their_addresses_in_order() -> None:
    udp = Proto(transport=Transport.UDP)
    config = Config(
        remotes=(
            Remote(host="vpn.example.test", port=1194, proto=udp),
            Remote(host="192.0.2.9", port=443, proto=udp),
            Remote(host="gone.example.test", port=1194, proto=udp),
        )
    )
    assert hostnames(config) == ["vpn.example.test", "gone.example.test"]
    a, b = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8::1")
    resolved = with_addresses(config, {"vpn.example.test": [a, b]})
    assert [(r.host, r.port) for r in resolved.remotes] == [
        ("198.51.100.1", 1194),
        ("2001:db8::1", 1194),
        ("192.0.2.9", 443),
    ]


def test_a_family_bound_proto_keeps_only_its_addresses() -> None:
    udp6 = Proto(transport=Transport.UDP, family=AddressFamily.IPV6)
    tcp4 = Proto(transport=Transport.TCP, family=AddressFamily.IPV4)
    config = Config(
        remotes=(
            Remote(host="vpn.example.test", port=1194, proto=udp6),
            Remote(host="vpn.example.test", port=443, proto=tcp4),
            Remote(host="v4only.example.test", port=1195, proto=udp6),
        )
    )
    a, b = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8::1")
    resolved = with_addresses(config, {"vpn.example.test": [a, b], "v4only.example.test": [a]})
    assert [(r.host, r.port) for r in resolved.remotes] == [
        ("2001:db8::1", 1194),
        ("198.51.100.1", 443),
    ]


def test_with_a_proxy_only_the_proxy_is_resolved_and_the_server_name_is_kept() -> None:
    tcp = Proto(transport=Transport.TCP)
    remotes = (Remote(host="vpn.example.test", port=443, proto=tcp),)
    config = Config(remotes=remotes, proxy=SocksProxy("tor.gateway.test", 9050))
    assert hostnames(config) == ["tor.gateway.test"]  # never the server's name: the proxy's job
    a = ipaddress.ip_address("10.152.152.10")
    resolved = with_addresses(config, {"tor.gateway.test": [a]})
    assert resolved.proxy == SocksProxy("10.152.152.10", 9050)
    assert resolved.remotes == remotes
    assert with_addresses(config, {}).remotes == ()  # the daemon says it cannot resolve
    literal = Config(remotes=remotes, proxy=SocksProxy("10.152.152.10", 9050))
    assert hostnames(literal) == [] and with_addresses(literal, {}) == literal


@pytest.mark.netns
def test_resolve_asks_over_a_marked_udp_socket(netns: Netns) -> None:
    """A one-shot DNS server in a namespace: the query arrives with our mark, A then AAAA."""
    seen: list[int] = []

    def server_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 5353))
        return sock

    sock = netns.call(server_socket)
    # nft: count packets that carry the mark, so the test sees the mark, not just a reply
    rules = (
        "add table inet t; add chain inet t o { type filter hook output priority 0; }; "
        "add rule inet t o udp dport 5353 meta mark 0x6d76 counter"
    )
    netns.run(["nft", rules])

    def serve() -> None:
        for _ in range(2):
            data, peer = sock.recvfrom(512)
            qtype = struct.unpack("!H", data[-4:-2])[0]
            seen.append(qtype)
            rdata = bytes([198, 51, 100, 1]) if qtype == QTYPE_A else bytes(15) + b"\x02"
            sock.sendto(answer(data, [(qtype, rdata)]), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        found = netns.call(
            lambda: asyncio.run(
                resolve(
                    "vpn.example.test",
                    [ipaddress.ip_address("127.0.0.1")],
                    mark=0x6D76,
                    port=5353,
                    timeout=2.0,
                )
            )
        )
    finally:
        thread.join(5)
        sock.close()
    assert seen == [QTYPE_A, QTYPE_AAAA]
    assert found == [ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("::2")]
    counted = netns.run(["nft", "list", "table", "inet", "t"]).stdout
    assert "packets 2" in counted


@pytest.mark.netns
def test_resolve_without_an_answer_says_so(netns: Netns) -> None:
    with pytest.raises(ResolveError, match=r"cannot resolve vpn\.example\.test through the uplink"):
        netns.call(
            lambda: asyncio.run(
                resolve(
                    "vpn.example.test",
                    [ipaddress.ip_address("127.0.0.1")],
                    mark=None,
                    port=5354,
                    timeout=0.3,
                )
            )
        )
    with pytest.raises(ResolveError, match="no uplink DNS"):
        asyncio.run(resolve("x.test", [], mark=None))
