"""The tun device: `/dev/net/tun` + ioctl TUNSETIFF (IFF_TUN | IFF_NO_PI), non-blocking.

The device lives exactly as long as the fd (no `persist`), so closing it removes the device and
everything the kernel attached to it (addresses, routes through it). The run loop depends on
the `TunDevice` protocol only; tests use the double in `tests/helpers/fake_client.py`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from typing import Protocol

log = logging.getLogger(__name__)

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes
MAX_PACKET = 65535


class TunDevice(Protocol):
    """A layer-3 tun device: one read or write is one IP packet."""

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def read(self) -> bytes | None:
        """One packet, or None when none is waiting (non-blocking)."""
        ...

    def write(self, packet: bytes) -> None: ...

    def close(self) -> None: ...


class Tun:
    """A tun device opened through /dev/net/tun; removed by the kernel when closed."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        try:
            return os.read(self._fd, MAX_PACKET)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> None:
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            log.debug("tun %s full: dropped a %d-byte packet", self._name, len(packet))
        except OSError as e:  # e.g. EINVAL for a malformed packet: drop it, keep running
            log.debug("tun %s refused a %d-byte packet: %s", self._name, len(packet), e)

    def close(self) -> None:
        if self._fd >= 0:
            log.info("closing tun device %s (the kernel removes it)", self._name)
            os.close(self._fd)
            self._fd = -1


def tun_name_pattern(dev: str) -> str:
    """The TUNSETIFF name for a config `dev`: "tun" → "tun%d" (kernel picks), "tun3" as is."""
    return f"{dev}%d" if dev in ("tun", "") else dev


def open_tun(name: str) -> Tun:
    """Create a tun device named `name` ("tun%d" lets the kernel choose the number)."""
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    log.info("creating tun device %s", name if "%d" not in name else f"{name} (next free number)")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    actual = _IFREQ.unpack(result)[0].rstrip(b"\0").decode()
    log.info("created tun device %s", actual)
    return Tun(fd, actual)
