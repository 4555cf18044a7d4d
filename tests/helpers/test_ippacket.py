"""The shared IPv4/ICMP helpers against known answers."""

from __future__ import annotations

import socket

from tests.helpers.ippacket import (
    icmp_echo_request,
    internet_checksum,
    ipv4_header,
    is_echo_reply,
)

# The IPv4 header of the Wikipedia "Internet checksum" example (checksum field zeroed).
EXAMPLE_HEADER = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")


def test_checksum_known_answer_and_a_header_that_carries_it_sums_to_zero() -> None:
    assert internet_checksum(EXAMPLE_HEADER) == 0xB861
    with_sum = EXAMPLE_HEADER[:10] + bytes.fromhex("b861") + EXAMPLE_HEADER[12:]
    assert internet_checksum(with_sum) == 0
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")  # odd length padded


def test_echo_request_has_valid_checksums_and_its_reply_is_recognised() -> None:
    src, dst = socket.inet_aton("10.8.0.2"), socket.inet_aton("10.8.0.1")
    request = icmp_echo_request(src, dst, 0x1234, 7)
    assert internet_checksum(request[:20]) == 0 and internet_checksum(request[20:]) == 0
    assert request[12:16] == src and request[16:20] == dst
    assert not is_echo_reply(request, 0x1234, 7)  # a request is not a reply
    icmp = bytearray(request[20:])
    icmp[0] = 0  # echo reply
    reply = ipv4_header(dst, src, len(icmp)) + bytes(icmp)
    assert is_echo_reply(reply, 0x1234, 7)
    assert not is_echo_reply(reply, 0x1234, 8)
    assert not is_echo_reply(reply[:24], 0x1234, 7)
