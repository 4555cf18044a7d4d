"""TCP framing: each OpenVPN packet is preceded by its length as a 2-byte big-endian integer.

Reference §1.1 (OpenVPN `socket.h`: `packet_size_type` is uint16_t; `socket.c: stream_buf_added`
restarts the connection on a length of 0 or one larger than its buffer). The length counts only
the packet, not the 2 length bytes.
"""

from __future__ import annotations

import struct

from .errors import DecodeError

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "MAX_ENCODABLE_FRAME", "StreamDecoder", "encode_frame"]

_LENGTH = struct.Struct("!H")
MAX_ENCODABLE_FRAME = 0xFFFF  # socket.h: packet_size_type is uint16_t
# Largest packet we accept from a peer. OpenVPN bounds it by its buffer size (tun-mtu plus
# overhead, a few KiB); a larger length means the stream is out of sync or hostile.
DEFAULT_MAX_FRAME_SIZE = 16384


def encode_frame(packet: bytes) -> bytes:
    """`length[2] || packet`; ValueError for an empty packet or one over 65535 bytes."""
    if not 0 < len(packet) <= MAX_ENCODABLE_FRAME:
        raise ValueError(f"cannot frame a packet of {len(packet)} bytes")
    return _LENGTH.pack(len(packet)) + packet


class StreamDecoder:
    """Splits a TCP byte stream into packets, buffering a partial frame between calls.

    After a DecodeError the stream is out of sync: the decoder stays failed (every later
    `feed` raises again) and the connection must be restarted, as OpenVPN does.
    """

    __slots__ = ("_buffer", "_failed", "max_frame_size")

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= MAX_ENCODABLE_FRAME:
            raise ValueError("max_frame_size must be within 1..65535")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back (an incomplete frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add stream bytes; return the complete packets now available, in order."""
        if self._failed is not None:
            raise DecodeError(self._failed)
        buf = self._buffer
        buf += data
        packets: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame_size:
                self._failed = (
                    f"bad frame length {length} (must be 1..{self.max_frame_size}); "
                    "stream out of sync"
                )
                del buf[:]
                raise DecodeError(self._failed)
            if end - pos - 2 < length:
                break
            packets.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]
        return packets
