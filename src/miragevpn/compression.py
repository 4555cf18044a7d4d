"""Data-channel compression framing (reference §6.6) and receive-side decompression.

We never compress what we send (compression oracles such as VORACLE; OpenVPN 2.6 does not
either unless `allow-compression yes`): every packet goes out with the byte(s) that say "not
compressed" in the negotiated framing. What the server sends may be compressed; when the
config allows it (`allow-compression asym|yes`, or a compression option without
`allow-compression`, which OpenVPN 2.6 treats as asym) and the library is installed, it is
decompressed here, bounded by `decompressed_limit`. Everything else that is compressed is
dropped and counted (`CompressionRefused`, `DecompressionFailed`), never fatal.

    framing           sent                    received
    comp-lzo no       0xFA || p               0xFA strip; 0x66 refused
    comp-lzo/lzo      0xFA || p               0xFA strip; 0x66 LZO1X
    compress (stub)   0xFB || p[1:] || p[0]   0xFB un-swap; 0x66/0x69 refused
    compress lz4      as stub                 0xFB un-swap; 0x69 un-swap then LZ4 block
    stub-v2 / lz4-v2  p (0x50 0x00 || p if    0x50 0x00 strip; 0x50 0x01 LZ4 block (lz4-v2
                      p starts with 0x50)     only); no 0x50: as is

(comp.h, lzo.c, comp-lz4.c, compstub.c in OpenVPN 2.6.) Decompression is a pure function of
bytes: `lz4.block` (python3-lz4 / PyPI lz4) and `lzo` (python3-lzo / PyPI python-lzo) wrap the
reference C libraries, whose safe decoders never write past the bound we give them. When a
library is missing, `missing_library` says which, and its compressed packets are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .config.model import AllowCompression, Compression, Config
from .errors import CompressionRefused, DecodeError, DecompressionFailed

__all__ = [
    "COMP_ALGV2_INDICATOR_BYTE",
    "LZ4_COMPRESS_BYTE",
    "LZO_COMPRESS_BYTE",
    "NO_COMPRESS_BYTE",
    "NO_COMPRESS_BYTE_SWAP",
    "REAL_COMPRESSION",
    "Decompression",
    "DecompressionStats",
    "advertised_algorithms",
    "config_notes",
    "decompressed_limit",
    "framing",
    "lz4_block_decompress",
    "lzo1x_decompress",
    "missing_library",
    "session_decompression",
]

# Framing bytes (comp.h)
NO_COMPRESS_BYTE = 0xFA  # comp-lzo (any mode): not compressed
LZO_COMPRESS_BYTE = 0x66  # comp-lzo yes|adaptive, compress lzo: LZO1X follows
NO_COMPRESS_BYTE_SWAP = 0xFB  # compress (stub), lz4: not compressed, byte0 moved to the end
LZ4_COMPRESS_BYTE = 0x69  # compress lz4: an LZ4 block follows, swapped the same way
COMP_ALGV2_INDICATOR_BYTE = 0x50  # stub-v2 / lz4-v2: an escape or compression header follows
COMP_ALGV2_UNCOMPRESSED_BYTE = 0x00  # comp.h: what the v2 reader strips
COMP_ALGV2_UNCOMPRESSED = 0x0A  # comp.h: what 2.6's v2 escape writer emits (accepted too)
COMP_ALGV2_LZ4_BYTE = 0x01

# init.c, frame_finalize_options: the receive buffer holds max(tun-mtu, 1600) + 32 bytes of
# payload (2.6 allows "baby giant" MTUs a server may push); decompressing beyond it fails there.
MIN_PAYLOAD_BUFFER = 1600
PAYLOAD_SLACK = 32

REAL_COMPRESSION = frozenset({Compression.LZO, Compression.LZ4, Compression.LZ4_V2})

# Which Python module decompresses what, and where it comes from (Debian 12 / PyPI).
_LIBRARY = {
    Compression.LZO: ("lzo", "python3-lzo", "python-lzo"),
    Compression.LZ4: ("lz4.block", "python3-lz4", "lz4"),
    Compression.LZ4_V2: ("lz4.block", "python3-lz4", "lz4"),
}


# The bindings are optional (the `compression` extra; Debian's python3-lz4, python3-lzo).
try:
    from lz4 import block as _lz4_block

    HAVE_LZ4 = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_LZ4 = False
try:
    import lzo as _lzo

    HAVE_LZO = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_LZO = False


def decompressed_limit(tun_mtu: int) -> int:
    """The largest payload a compressed packet may decompress to (OpenVPN's buffer size)."""
    return max(tun_mtu, MIN_PAYLOAD_BUFFER) + PAYLOAD_SLACK


def missing_library(compression: Compression) -> str | None:
    """None if `compression` needs no library or its library is installed, else what to
    install, in words."""
    entry = _LIBRARY.get(compression)
    if entry is None or (HAVE_LZO if compression is Compression.LZO else HAVE_LZ4):
        return None
    module, debian, pypi = entry
    return f"the Python module {module!r} is not installed (Debian: {debian}; PyPI: {pypi})"


def advertised_algorithms() -> tuple[str, ...]:
    """The peer-info lines (names) of the algorithms we can decompress, in 2.6's order
    (comp.c: comp_generate_peer_info_string): IV_LZ4, IV_LZ4v2, IV_LZO."""
    names: tuple[str, ...] = ()
    if HAVE_LZ4:
        names += ("IV_LZ4", "IV_LZ4v2")
    if HAVE_LZO:
        names += ("IV_LZO",)
    return names


def config_notes(config: Config) -> list[str]:
    """What happens to compressed packets from the server, for the config checker (we never
    compress ours): nothing to say without compression, else a line and any warnings."""
    allow, framing_ = config.allow_compression, config.compression
    if allow is AllowCompression.NO:
        if framing_ is Compression.NONE:
            return []
        return [f"compression: {framing_.value} framing only (allow-compression no)"]
    if framing_ in REAL_COMPRESSION:
        needed = [framing_]
        head = f"compression: {framing_.value}, received packets decompressed"
    else:  # the server may push either
        needed = [Compression.LZ4, Compression.LZO]
        head = f"compression: {framing_.value} framing; pushed LZ4/LZO decompressed"
    missing = sorted({m for c in needed if (m := missing_library(c)) is not None})
    lines = [f"{head} (allow-compression {allow.value}); what we send is never compressed"]
    return lines + [f"warning: compressed packets will be dropped: {m}" for m in missing]


# --------------------------------------------------------------------------- decompressors


def lz4_block_decompress(data: bytes, limit: int) -> bytes:
    """One raw LZ4 block (no size header), at most `limit` bytes out; DecompressionFailed
    for corrupt or oversized input, CompressionRefused without the library."""
    if not HAVE_LZ4:
        raise CompressionRefused(
            f"LZ4-compressed packet dropped: {missing_library(Compression.LZ4)}"
        )
    try:
        out = _lz4_block.decompress(data, uncompressed_size=limit)
    except Exception as exc:  # LZ4BlockError, or anything else the binding raises
        raise DecompressionFailed(f"LZ4 block corrupt or larger than {limit} bytes") from exc
    return _checked(out, "LZ4")


def lzo1x_decompress(data: bytes, limit: int) -> bytes:
    """One raw LZO1X stream (no python-lzo header), at most `limit` bytes out; errors as
    `lz4_block_decompress`."""
    if not HAVE_LZO:
        raise CompressionRefused(
            f"LZO-compressed packet dropped: {missing_library(Compression.LZO)}"
        )
    try:
        out = _lzo.decompress(data, False, limit)
    except Exception as exc:  # lzo.error (LZO_E_*), or anything else the binding raises
        raise DecompressionFailed(f"LZO data corrupt or larger than {limit} bytes") from exc
    return _checked(out, "LZO")


def _checked(out: object, name: str) -> bytes:
    if not isinstance(out, bytes | bytearray) or not out:
        raise DecompressionFailed(f"{name} data decompressed to nothing")
    return bytes(out)


# --------------------------------------------------------------------------- one session


@dataclass(slots=True, eq=False)
class DecompressionStats:
    """Decompressed packets and their sizes before and after (OpenVPN's pre/post_decompress)."""

    packets: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Decompression:
    """Receive-side decompression is allowed: up to `limit` bytes a packet, counted in
    `stats` (shared by every key of a session, or the client's lifetime counters)."""

    limit: int
    stats: DecompressionStats = field(default_factory=DecompressionStats)

    def run(self, inflate: Callable[[bytes, int], bytes], data: bytes) -> bytes:
        out = inflate(data, self.limit)
        stats = self.stats
        stats.packets += 1
        stats.bytes_in += len(data)
        stats.bytes_out += len(out)
        return out


def session_decompression(
    compression: Compression,
    allow: AllowCompression,
    *,
    tun_mtu: int,
    stats: DecompressionStats,
) -> tuple[Decompression | None, str | None]:
    """The receive-side decompression of a tunnel with this framing (None: refuse every
    compressed packet), and a warning to show once when its library is missing."""
    if compression not in REAL_COMPRESSION or allow is AllowCompression.NO:
        return None, None
    missing = missing_library(compression)
    warning = None
    if missing is not None:
        warning = f"{compression.value}: compressed packets will be dropped: {missing}"
    return Decompression(decompressed_limit(tun_mtu), stats), warning


Frame = Callable[[bytes], bytes]


def framing(compression: Compression, decompression: Decompression | None) -> tuple[Frame, Frame]:
    """(frame what we send, unframe what we receive) for one negotiated framing. Without
    `decompression` (allow-compression no) compressed packets are refused; unframing raises
    DecodeError (a broken framing byte), CompressionRefused or DecompressionFailed."""
    match compression:
        case Compression.NONE:
            return _same, _same
        case Compression.LZO_NO:
            return _frame_lzo, _lzo_reader(None)
        case Compression.LZO:
            return _frame_lzo, _lzo_reader(decompression)
        case Compression.STUB:
            return _frame_swap, _swap_reader(None)
        case Compression.LZ4:
            return _frame_swap, _swap_reader(decompression)
        case Compression.STUB_V2:
            return _frame_v2, _v2_reader(None)
        case Compression.LZ4_V2:
            return _frame_v2, _v2_reader(decompression)


def _refused(what: str) -> CompressionRefused:
    return CompressionRefused(f"{what} packet dropped: decompression is not allowed here")


def _same(data: bytes) -> bytes:
    return data


def _frame_lzo(payload: bytes) -> bytes:
    return b"\xfa" + payload


def _frame_swap(payload: bytes) -> bytes:
    return b"\xfb" + payload[1:] + payload[:1]


def _frame_v2(payload: bytes) -> bytes:
    if payload[:1] == b"\x50":
        return b"\x50\x00" + payload
    return payload


def _lzo_reader(decompression: Decompression | None) -> Frame:
    def deframe(data: bytes) -> bytes:
        if not data:
            raise DecodeError("data packet without its comp-lzo byte")
        head = data[0]
        if head == NO_COMPRESS_BYTE:
            return data[1:]
        if head == LZO_COMPRESS_BYTE:
            if decompression is None:
                raise _refused("LZO-compressed")
            return decompression.run(lzo1x_decompress, data[1:])
        raise DecodeError(f"bad comp-lzo framing byte {head:#04x}")

    return deframe


def _swap_reader(decompression: Decompression | None) -> Frame:
    def deframe(data: bytes) -> bytes:
        if not data:
            raise DecodeError("data packet without its compress byte")
        head = data[0]
        if head == NO_COMPRESS_BYTE_SWAP:
            return data[-1:] + data[1:-1] if len(data) > 1 else b""
        if head == LZ4_COMPRESS_BYTE and decompression is not None:
            if len(data) < 2:
                raise DecompressionFailed("LZ4 packet without data")
            return decompression.run(lz4_block_decompress, data[-1:] + data[1:-1])
        if head in (LZ4_COMPRESS_BYTE, LZO_COMPRESS_BYTE):
            raise _refused("LZ4-compressed" if head == LZ4_COMPRESS_BYTE else "LZO-compressed")
        raise DecodeError(f"bad compress (swap) framing byte {head:#04x}")

    return deframe


def _v2_reader(decompression: Decompression | None) -> Frame:
    def deframe(data: bytes) -> bytes:
        if data[:1] != b"\x50":  # COMP_ALGV2_INDICATOR_BYTE
            return data
        if len(data) < 2:
            raise DecodeError("compress v2 header cut short")
        alg = data[1]
        if alg in (COMP_ALGV2_UNCOMPRESSED_BYTE, COMP_ALGV2_UNCOMPRESSED):
            return data[2:]
        if alg == COMP_ALGV2_LZ4_BYTE and decompression is not None:
            return decompression.run(lz4_block_decompress, data[2:])
        raise _refused(f"compressed (v2 algorithm {alg})")

    return deframe
