"""The statistics line the interop tests read (describe.describe_stats), parsed."""

from __future__ import annotations

import pytest

from tests.helpers.ourclient import ClientStats


def test_parse_with_and_without_decompressed_packets() -> None:
    plain = ClientStats.parse(
        "x statistics: in 5 packets (700 bytes), out 2 packets (90 bytes), "
        "tunnel packets in 3 out 1, dropped 2 (replayed 2)"
    )
    assert (plain.packets_in, plain.tunnel_out, plain.decompressed) == (5, 1, 0)
    assert plain.dropped == {"replayed": 2}
    inflated = ClientStats.parse(
        "statistics: in 5 packets (700 bytes), out 2 packets (90 bytes), tunnel packets in 3 "
        "out 1, decompressed 4 packets (120 -> 4000 bytes), dropped 1 "
        "(corrupt or oversized compressed data 1)"
    )
    assert inflated.decompressed == 4 and inflated.tunnel_in == 3
    assert inflated.dropped == {"corrupt or oversized compressed data": 1}
    with pytest.raises(AssertionError):
        ClientStats.parse("statistics: in 5 packets")
