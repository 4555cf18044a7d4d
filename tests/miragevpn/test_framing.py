"""framing.py: TCP 2-byte length framing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.errors import DecodeError
from miragevpn.framing import StreamDecoder, encode_frame


def test_encode() -> None:
    assert encode_frame(b"\x38abc") == b"\x00\x04\x38abc"
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(bytes(65536))
    assert encode_frame(bytes(65535))[:2] == b"\xff\xff"


def test_partial_frames_are_buffered() -> None:
    d = StreamDecoder()
    stream = encode_frame(b"hello") + encode_frame(b"world!")
    assert d.feed(stream[:1]) == []
    assert d.feed(stream[1:4]) == []
    assert d.buffered == 4
    assert d.feed(stream[4:9]) == [b"hello"]
    assert d.feed(stream[9:]) == [b"world!"]
    assert d.buffered == 0


def test_zero_length_is_fatal() -> None:
    d = StreamDecoder()
    with pytest.raises(DecodeError):
        d.feed(b"\x00\x00")
    with pytest.raises(DecodeError):  # stays failed: the stream is out of sync
        d.feed(encode_frame(b"x"))


def test_oversized_frame_is_fatal() -> None:
    d = StreamDecoder(max_frame_size=100)
    assert d.feed(encode_frame(bytes(100))) == [bytes(100)]
    with pytest.raises(DecodeError):
        d.feed(b"\x00\x65")


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=10),
    st.lists(st.integers(0, 400), max_size=20),
)
def test_any_split_gives_the_same_packets(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in packets)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    d = StreamDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += d.feed(stream[a:b])
    assert out == packets
    assert d.buffered == 0


@given(st.lists(st.binary(max_size=50), max_size=8))
def test_hostile_stream(chunks: list[bytes]) -> None:
    d = StreamDecoder(max_frame_size=1000)
    try:
        for chunk in chunks:
            for packet in d.feed(chunk):
                assert 0 < len(packet) <= 1000
    except DecodeError:
        pass
