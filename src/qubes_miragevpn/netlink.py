"""The tun device and the kernel network state of a tunnel: addresses, routes, MTU.

Two pieces, each small enough to reuse in the Qubes gateway daemon:

- `open_tun(name)`: `/dev/net/tun` + ioctl TUNSETIFF (IFF_TUN | IFF_NO_PI), non-blocking. The
  device lives exactly as long as the fd (no `persist`), so closing it removes the device and
  everything the kernel attached to it.
- `Netlink`: applies `TunnelSettings` through pyroute2 (`IPRoute`, in the current network
  namespace). Every change is logged before it is made, in words a person could replay
  ("adding route 0.0.0.0/1 dev tun0"), and its exact inverse is pushed on an `ExitStack`;
  `revert()` undoes the tunnel's changes in reverse order, touching only what we added.

The service depends on the `TunDevice` and `NetworkConfigurator` protocols only; tests use doubles
from `tests/helpers/`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from miragevpn.events import TunnelSettings

log = logging.getLogger(__name__)

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes
IFA_F_NODAD = 0x02  # <linux/if_addr.h>: no duplicate address detection on a point-to-point tun
MAX_PACKET = 65535

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------------- protocols


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


class NetworkConfigurator(Protocol):
    """Creates the tun device and applies/reverts the tunnel's addresses and routes."""

    def open_tun(self, name: str) -> TunDevice: ...

    def apply(self, ifname: str, settings: TunnelSettings) -> None:
        """Configure `ifname` for `settings` (after reverting any previous settings)."""
        ...

    def revert(self) -> None:
        """Undo everything `apply` did, in reverse order."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- tun


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


# --------------------------------------------------------------------------- netlink


def _family(address: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _host_network(address: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(address)


class Netlink:
    """`NetworkConfigurator` on the kernel, through pyroute2, in the current namespace."""

    def __init__(self, ipr: Any = None) -> None:
        self._ipr: Any = ipr if ipr is not None else IPRoute()
        self._undo = contextlib.ExitStack()
        self._applied: TunnelSettings | None = None

    # ---- the protocol

    def open_tun(self, name: str) -> Tun:
        return open_tun(name)

    def apply(self, ifname: str, settings: TunnelSettings) -> None:
        if self._applied == settings:
            log.info("tunnel settings unchanged: keeping %s as configured", ifname)
            return
        self.revert()
        with contextlib.ExitStack() as stack:
            self._configure(stack, ifname, settings)
            self._undo = stack.pop_all()  # success: keep the undo actions for revert()
        self._applied = settings

    def revert(self) -> None:
        self._applied = None
        undo, self._undo = self._undo, contextlib.ExitStack()
        undo.close()

    def close(self) -> None:
        self.revert()
        self._ipr.close()

    # ---- the steps

    def _configure(self, stack: contextlib.ExitStack, ifname: str, s: TunnelSettings) -> None:
        index = self._index(ifname)
        # Look up the path to the server before any tunnel route can change the answer.
        server_route = None
        if s.redirect_gateway_ipv4 or s.redirect_gateway_ipv6:
            server_route = self._lookup(s.remote_address)

        self._set_mtu(stack, ifname, index, s.mtu)
        self._step(
            stack,
            f"bringing {ifname} up",
            lambda: self._ipr.link("set", index=index, state="up"),
            None,
        )
        if s.ipv4 is not None:
            self._add_ipv4_address(stack, ifname, index, s)
        if s.ipv6 is not None:
            self._step(
                stack,
                f"adding address {s.ipv6} to {ifname}",
                lambda: self._addr6("add", index, s),
                (f"removing address {s.ipv6} from {ifname}", lambda: self._addr6("del", index, s)),
            )
        if server_route is not None:
            self._add_server_route(stack, s.remote_address, server_route)
        if s.redirect_gateway_ipv4:
            for net in ("0.0.0.0/1", "128.0.0.0/1"):
                self._add_route(stack, ifname, index, ipaddress.ip_network(net), None, None)
        if s.redirect_gateway_ipv6:
            for net in ("::/1", "8000::/1"):
                self._add_route(stack, ifname, index, ipaddress.ip_network(net), None, None)
        for route in s.routes:
            self._add_route(stack, ifname, index, route.network, route.gateway, route.metric)

    def _index(self, ifname: str) -> int:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            raise OSError(errno.ENODEV, f"no interface named {ifname}")
        return int(found[0])

    def _lookup(self, address: IPAddress) -> tuple[IPAddress | None, int]:
        """(gateway or None if on-link, output interface index) of the route to `address`."""
        msg = self._ipr.route("get", dst=str(address), family=_family(address))[0]
        gateway = msg.get_attr("RTA_GATEWAY")
        return (ipaddress.ip_address(gateway) if gateway else None, int(msg.get_attr("RTA_OIF")))

    def _ifname(self, index: int) -> str:
        links = self._ipr.get_links(index)
        return str(links[0].get_attr("IFLA_IFNAME")) if links else f"#{index}"

    def _add_ipv4_address(
        self, stack: contextlib.ExitStack, ifname: str, index: int, s: TunnelSettings
    ) -> None:
        assert s.ipv4 is not None
        local = str(s.ipv4.ip)
        if s.ipv4_peer is not None:  # net30 / p2p: local address with a point-to-point peer
            kwargs: dict[str, Any] = {"local": local, "address": str(s.ipv4_peer), "prefixlen": 32}
            words = f"address {local} peer {s.ipv4_peer}"
        else:  # subnet
            kwargs = {"address": local, "prefixlen": s.ipv4.network.prefixlen}
            words = f"address {s.ipv4}"
        self._step(
            stack,
            f"adding {words} to {ifname}",
            lambda: self._ipr.addr("add", index=index, **kwargs),
            (
                f"removing {words} from {ifname}",
                lambda: self._ipr.addr("del", index=index, **kwargs),
            ),
        )

    def _addr6(self, command: str, index: int, s: TunnelSettings) -> None:
        assert s.ipv6 is not None
        extra = {"flags": IFA_F_NODAD} if command == "add" else {}
        self._ipr.addr(
            command,
            index=index,
            address=str(s.ipv6.ip),
            prefixlen=s.ipv6.network.prefixlen,
            family=socket.AF_INET6,
            **extra,
        )

    def _add_server_route(
        self,
        stack: contextlib.ExitStack,
        server: IPAddress,
        route: tuple[IPAddress | None, int],
    ) -> None:
        gateway, oif = route
        network = _host_network(server)
        self._add_route(stack, self._ifname(oif), oif, network, gateway, None, what="host route")

    def _add_route(
        self,
        stack: contextlib.ExitStack,
        ifname: str,
        index: int,
        network: IPNetwork,
        gateway: IPAddress | None,
        metric: int | None,
        *,
        what: str = "route",
    ) -> None:
        kwargs: dict[str, Any] = {"dst": str(network), "oif": index, "family": _family(network)}
        words = f"{what} {network}"
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
            words += f" via {gateway}"
        words += f" dev {ifname}"
        if metric is not None:
            kwargs["priority"] = metric
            words += f" metric {metric}"
        try:
            self._step(
                stack,
                f"adding {words}",
                lambda: self._ipr.route("add", **kwargs),
                (f"removing {words}", lambda: self._ipr.route("del", **kwargs)),
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            # Someone else's route: leave it alone (and do not remove it on revert).
            log.warning("%s already exists: leaving it as it is", words)

    def _set_mtu(self, stack: contextlib.ExitStack, ifname: str, index: int, mtu: int) -> None:
        """Set the MTU, remembering the old one for revert (the device may outlive us)."""
        links = self._ipr.get_links(index)
        old = int(links[0].get_attr("IFLA_MTU")) if links else None
        self._step(
            stack,
            f"setting MTU of {ifname} to {mtu}",
            lambda: self._ipr.link("set", index=index, mtu=mtu),
            None
            if old is None or old == mtu
            else (
                f"restoring MTU {old} on {ifname}",
                lambda: self._ipr.link("set", index=index, mtu=old),
            ),
        )

    def _step(
        self,
        stack: contextlib.ExitStack,
        words: str,
        action: Callable[[], object],
        undo: tuple[str, Callable[[], object]] | None,
    ) -> None:
        """Log `words`, do `action`, then register its undo (logged too, errors tolerated)."""
        log.info("%s", words)
        action()
        if undo is not None:
            undo_words, undo_action = undo
            stack.callback(_undo_step, undo_words, undo_action)


def _undo_step(words: str, action: Callable[[], object]) -> None:
    log.info("%s", words)
    try:
        action()
    except NetlinkError as e:
        # ENODEV/ESRCH/EADDRNOTAVAIL: already gone (e.g. the tun device was closed first).
        log.info("  (already gone: %s)", e)
