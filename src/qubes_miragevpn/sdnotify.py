"""`sd_notify(state)`: tell systemd how we are doing (READY=1, STATUS=..., STOPPING=1).

Written here instead of depending on a systemd binding: the whole protocol is one `sendto` of
newline-separated KEY=VALUE text to the datagram socket named by `$NOTIFY_SOCKET` (a leading `@`
means a Linux abstract socket name). Without `$NOTIFY_SOCKET` (not started by systemd with
`Type=notify`) it does nothing. Errors are logged, never raised: status reporting must not take
the tunnel down. The send never blocks (a receiver that stopped reading loses the message, not
the event loop that carries the packets).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes | None:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None  # vsock and other forms are not for us


def sd_notify(state: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=connected") to systemd; True if it was sent."""
    name = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not name:
        return False
    address = _address(name)
    if address is None:
        log.debug("NOTIFY_SOCKET %r is not a unix socket: not notifying", name)
        return False
    try:
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:
        log.debug("sd_notify(%r) failed: %s", state, e)
        return False
    return True
