"""Compression framing and receive-side decompression (compression.py).

Vectors: packets framed as OpenVPN 2.6 frames them (comp-lz4.c, lzo.c), the compressed part
made by the real libraries (python-lz4 / python-lzo wrap liblz4 / liblzo2, which OpenVPN links
too) and by hand (literal-only blocks, so the decoders are checked independently of the
library's encoder). Hypothesis: whatever an authenticated peer sends, unframing gives a payload
within the limit or one of our DecodeErrors, never a library exception.
"""

from __future__ import annotations

import lz4.block
import lzo
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn import compression
from miragevpn.compression import (
    Decompression,
    DecompressionStats,
    config_notes,
    decompressed_limit,
    framing,
    missing_library,
    session_decompression,
)
from miragevpn.config.model import AllowCompression, Compression, Config
from miragevpn.errors import (
    CompressionRefused,
    DecodeError,
    DecompressionFailed,
    DropReason,
)

LIMIT = decompressed_limit(1500)
# A highly compressible IPv4-looking packet: what a ping -p 00 with 1400 bytes carries.
PACKET = bytes.fromhex("4500057c00004000400100000a0800010a080002") + bytes(1380)


def lz4_raw(data: bytes) -> bytes:
    return lz4.block.compress(data, store_size=False)


def lzo_raw(data: bytes) -> bytes:
    return lzo.compress(data, 1, False)  # LZO1X-1, OpenVPN's lzo1x_1_15_compress decodes alike


def swap_lz4(block: bytes) -> bytes:
    """comp-lz4.c lz4_compress: 0x69 replaces the first byte, which moves to the end."""
    return b"\x69" + block[1:] + block[:1]


def unframe(kind: Compression, data: bytes, decompression: Decompression | None = None) -> bytes:
    return framing(kind, decompression)[1](data)


def allowed(limit: int = LIMIT) -> Decompression:
    return Decompression(limit)


# --------------------------------------------------------------------------- vectors


def test_limit_is_openvpns_receive_buffer() -> None:
    assert decompressed_limit(1500) == 1632  # init.c: max(tun-mtu, 1600) + 32
    assert decompressed_limit(9000) == 9032


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        (Compression.LZ4_V2, b"\x50\x01" + lz4_raw(PACKET)),
        (Compression.LZ4, swap_lz4(lz4_raw(PACKET))),
        (Compression.LZO, b"\x66" + lzo_raw(PACKET)),
    ],
)
def test_library_compressed_packets_decompress(kind: Compression, framed: bytes) -> None:
    d = allowed()
    assert len(framed) < 100  # really compressed
    assert unframe(kind, framed, d) == PACKET
    assert (d.stats.packets, d.stats.bytes_out) == (1, len(PACKET))
    assert d.stats.bytes_in == len(framed) - (2 if kind is Compression.LZ4_V2 else 1)


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        # LZ4 block: token 0x50 = 5 literals, no match (the last sequence of a block)
        (Compression.LZ4_V2, b"\x50\x01\x50hello"),
        (Compression.LZ4, b"\x69hello\x50"),  # the token byte swapped to the end
        # LZO1X: first byte 17 + 5 = 5 literals, then the end-of-stream marker 0x11 0 0
        (Compression.LZO, b"\x66\x16hello\x11\x00\x00"),
    ],
)
def test_hand_made_streams(kind: Compression, framed: bytes) -> None:
    assert unframe(kind, framed, allowed()) == b"hello"


@pytest.mark.parametrize(
    ("kind", "framed", "expected"),
    [
        (Compression.LZO, b"\xfa\x45abc", b"\x45abc"),
        (Compression.LZ4, b"\xfbabc\x45", b"\x45abc"),
        (Compression.LZ4_V2, b"\x45abc", b"\x45abc"),
        (Compression.LZ4_V2, b"\x50\x00\x50abc", b"\x50abc"),
    ],
)
def test_uncompressed_packets_of_a_compressing_framing(
    kind: Compression, framed: bytes, expected: bytes
) -> None:
    d = allowed()
    assert unframe(kind, framed, d) == expected
    assert d.stats.packets == 0


@pytest.mark.parametrize("kind", list(Compression))
def test_we_never_compress(kind: Compression) -> None:
    """What we send is framed as uncompressed whatever is negotiated (comp.h bytes)."""
    frame = framing(kind, allowed())[0]
    sent = frame(PACKET)
    assert len(sent) >= len(PACKET)
    assert (
        sent[:1]
        in {
            Compression.NONE: (b"\x45",),
            Compression.LZO_NO: (b"\xfa",),
            Compression.LZO: (b"\xfa",),
            Compression.STUB: (b"\xfb",),
            Compression.LZ4: (b"\xfb",),
            Compression.STUB_V2: (b"\x45",),
            Compression.LZ4_V2: (b"\x45",),
        }[kind]
    )


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        (Compression.LZ4_V2, b"\x50\x01" + lz4_raw(PACKET)),
        (Compression.LZ4, swap_lz4(lz4_raw(PACKET))),
        (Compression.LZO, b"\x66" + lzo_raw(PACKET)),
    ],
)
def test_compressed_packets_are_refused_without_permission(
    kind: Compression, framed: bytes
) -> None:
    with pytest.raises(CompressionRefused, match="not allowed"):
        unframe(kind, framed, None)


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        (Compression.LZO_NO, b"\x66" + lzo_raw(PACKET)),  # compstub.c: only 0xFA
        (Compression.STUB, swap_lz4(lz4_raw(PACKET))),
        (Compression.STUB_V2, b"\x50\x01" + lz4_raw(PACKET)),
        (Compression.LZ4_V2, b"\x50\x02" + lzo_raw(PACKET)),  # COMP_ALGV2_LZO_BYTE: not in 2.6
    ],
)
def test_stub_framings_refuse_compressed_packets_even_when_allowed(
    kind: Compression, framed: bytes
) -> None:
    with pytest.raises(CompressionRefused):
        unframe(kind, framed, allowed())


def test_refusals_and_failures_are_counted_drops_that_keep_a_tcp_session() -> None:
    refused, failed = CompressionRefused("x"), DecompressionFailed("y")
    assert DropReason.of(refused) is DropReason.COMPRESSION_REFUSED
    assert DropReason.of(failed) is DropReason.DECOMPRESSION_FAILED
    assert not refused.fatal_on_tcp and not failed.fatal_on_tcp
    assert DecodeError("z").fatal_on_tcp


# --------------------------------------------------------------------------- bombs and corruption


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        (Compression.LZ4_V2, b"\x50\x01" + lz4_raw(bytes(100_000))),
        (Compression.LZ4, swap_lz4(lz4_raw(bytes(100_000)))),
        (Compression.LZO, b"\x66" + lzo_raw(bytes(100_000))),
    ],
)
def test_decompression_bombs_are_dropped_at_the_limit(kind: Compression, framed: bytes) -> None:
    d = allowed()
    assert len(framed) < 1500  # fits one packet, 100 kB inside
    with pytest.raises(DecompressionFailed, match="larger than 1632"):
        unframe(kind, framed, d)
    assert d.stats.packets == 0


def test_exactly_the_limit_passes() -> None:
    data = bytes(range(256)) * 6 + bytes(LIMIT - 1536)
    assert len(data) == LIMIT
    assert unframe(Compression.LZ4_V2, b"\x50\x01" + lz4_raw(data), allowed()) == data
    assert unframe(Compression.LZO, b"\x66" + lzo_raw(data), allowed()) == data
    with pytest.raises(DecompressionFailed):
        unframe(Compression.LZ4_V2, b"\x50\x01" + lz4_raw(data + b"x"), allowed())
    with pytest.raises(DecompressionFailed):
        unframe(Compression.LZO, b"\x66" + lzo_raw(data + b"x"), allowed())


@pytest.mark.parametrize(
    ("kind", "framed"),
    [
        (Compression.LZ4_V2, b"\x50\x01"),  # nothing to decompress
        (Compression.LZ4_V2, b"\x50\x01\xff\xff\xff"),  # literal length runs off the end
        (Compression.LZ4_V2, b"\x50\x01" + lz4_raw(PACKET)[:-3]),  # cut short
        (Compression.LZ4, b"\x69"),
        (Compression.LZ4, b"\x69\x00"),  # a block that decompresses to nothing
        (Compression.LZO, b"\x66"),
        (Compression.LZO, b"\x66" + lzo_raw(PACKET)[:-2]),
        (Compression.LZO, b"\x66\x11\x00\x00"),  # end marker only: nothing
    ],
)
def test_corrupt_compressed_data_is_dropped(kind: Compression, framed: bytes) -> None:
    with pytest.raises(DecompressionFailed):
        unframe(kind, framed, allowed())


# --------------------------------------------------------------------------- missing libraries


def test_a_missing_library_refuses_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "HAVE_LZ4", False)
    monkeypatch.setattr(compression, "HAVE_LZO", False)
    with pytest.raises(CompressionRefused, match=r"'lz4\.block' is not installed.*python3-lz4"):
        unframe(Compression.LZ4_V2, b"\x50\x01" + lz4_raw(PACKET), allowed())
    with pytest.raises(CompressionRefused, match="python3-lzo; PyPI: python-lzo"):
        unframe(Compression.LZO, b"\x66" + lzo_raw(PACKET), allowed())
    assert unframe(Compression.LZ4_V2, b"\x45abc", allowed()) == b"\x45abc"  # still framed
    assert compression.advertised_algorithms() == ()
    d, warning = session_decompression(
        Compression.LZ4, AllowCompression.ASYM, tun_mtu=1500, stats=DecompressionStats()
    )
    assert d is not None
    assert warning is not None and "compress lz4: compressed packets will be dropped" in warning
    lzo_config = Config(compression=Compression.LZO, allow_compression=AllowCompression.ASYM)
    notes = config_notes(lzo_config)
    assert notes[1] == (
        "warning: compressed packets will be dropped: the Python module 'lzo' is not installed "
        "(Debian: python3-lzo; PyPI: python-lzo)"
    )


def test_with_the_libraries() -> None:
    assert missing_library(Compression.LZ4_V2) is None
    assert missing_library(Compression.LZO) is None
    assert missing_library(Compression.STUB) is None
    assert compression.advertised_algorithms() == ("IV_LZ4", "IV_LZ4v2", "IV_LZO")


def test_session_decompression_follows_allow_compression() -> None:
    stats = DecompressionStats()
    for kind in (Compression.LZO, Compression.LZ4, Compression.LZ4_V2):
        for allow in (AllowCompression.ASYM, AllowCompression.YES):
            d, warning = session_decompression(kind, allow, tun_mtu=1400, stats=stats)
            assert d is not None and d.limit == 1632 and d.stats is stats and warning is None
        assert session_decompression(kind, AllowCompression.NO, tun_mtu=1400, stats=stats) == (
            None,
            None,
        )
    for stub in (Compression.NONE, Compression.LZO_NO, Compression.STUB, Compression.STUB_V2):
        d, _ = session_decompression(stub, AllowCompression.YES, tun_mtu=1400, stats=stats)
        assert d is None


def test_config_notes() -> None:
    assert config_notes(Config()) == []
    assert config_notes(Config(compression=Compression.STUB_V2)) == [
        "compression: compress stub-v2 framing only (allow-compression no)"
    ]
    assert config_notes(
        Config(compression=Compression.LZ4_V2, allow_compression=AllowCompression.ASYM)
    ) == [
        "compression: compress lz4-v2, received packets decompressed (allow-compression asym); "
        "what we send is never compressed"
    ]
    assert config_notes(Config(allow_compression=AllowCompression.YES)) == [
        "compression: none framing; pushed LZ4/LZO decompressed (allow-compression yes); "
        "what we send is never compressed"
    ]


# --------------------------------------------------------------------------- hypothesis

KINDS = st.sampled_from(list(Compression))


@given(st.binary(max_size=300), KINDS, st.booleans(), st.integers(1, 3000))
def test_any_plaintext_gives_a_bounded_payload_or_our_error(
    data: bytes, kind: Compression, allow: bool, limit: int
) -> None:
    d = allowed(limit) if allow else None
    try:
        out = unframe(kind, data, d)
    except DecodeError:
        return
    if d is not None and d.stats.packets:
        assert 0 < len(out) <= limit


@given(
    st.sampled_from(
        [
            (Compression.LZ4_V2, b"\x50\x01"),
            (Compression.LZ4, b"\x69"),
            (Compression.LZO, b"\x66"),
        ]
    ),
    st.binary(max_size=400),
    st.integers(1, 2000),
)
def test_any_compressed_body_gives_a_bounded_payload_or_our_error(
    kind_head: tuple[Compression, bytes], body: bytes, limit: int
) -> None:
    kind, head = kind_head
    try:
        out = unframe(kind, head + body, allowed(limit))
    except (CompressionRefused, DecompressionFailed):
        return
    assert 0 < len(out) <= limit


@given(st.binary(min_size=1, max_size=LIMIT), st.sampled_from(list(compression.REAL_COMPRESSION)))
def test_what_the_libraries_compress_comes_back(payload: bytes, kind: Compression) -> None:
    if kind is Compression.LZ4_V2:
        framed = b"\x50\x01" + lz4_raw(payload)
    elif kind is Compression.LZ4:
        framed = swap_lz4(lz4_raw(payload))
    else:
        framed = b"\x66" + lzo_raw(payload)
    assert unframe(kind, framed, allowed()) == payload


@given(st.binary(min_size=1, max_size=LIMIT), KINDS)
def test_what_we_frame_unframes(payload: bytes, kind: Compression) -> None:
    frame, deframe = framing(kind, allowed())
    assert deframe(frame(payload)) == payload
