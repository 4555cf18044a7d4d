"""Which server to try next, and how long to wait before trying.

OpenVPN 2.6 references: `init.c` (`init_connection_list`: remote-random shuffle;
`next_connection_entry`: every resolved address of a remote before the next remote;
`socket_restart_pause`: connect-retry back-off; connect-retry-max), `socket.c` (resolv-retry).

- Order: as configured, or shuffled once with an unbiased Fisher–Yates driven by the injected
  `rng` (`remote-random`; OpenVPN's own shuffle uses a biased modulo).
- A failure of the current attempt (connect failed or timed out, no answer to our reset, TLS
  error, ping-restart...) moves to the next resolved address of the same remote (of either
  family for `proto udp`/`tcp`, in the resolver's order), then to the next remote, wrapping
  around.
- The pause before the next attempt is `connect-retry` seconds; after 5 unsuccessful attempts
  per remote it doubles each time (`n << k`, k ≤ 15), capped at the `connect-retry` maximum.
  A server-requested back-off (`AUTH_FAILED,TEMP[backoff N]`) raises it.
- `connect-retry-max n`: give up when every remote was tried n times without success.
- `resolv-retry n`: give up when name resolution keeps failing for n seconds.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config.model import AddressFamily, Config, Remote, Transport
from .errors import ConfigError, LocalProtocolError, MirageVPNError
from .events import ConnectionRequested, ProxyRoute

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_SHIFT = 15  # socket_restart_pause: `min_int(backoff, 15)`
_FREE_ATTEMPTS_PER_REMOTE = 4  # backoff = attempts / #remotes - 4


class RetriesExhausted(MirageVPNError):
    """connect-retry-max or resolv-retry ran out: the session ends."""


class Advance(enum.Enum):
    """How far to move after a failure (`AUTH_FAILED,TEMP[advance ...]`, `RESTART,[N]`)."""

    NO = "no"  # retry the same address
    ADDRESS = "addr"  # next resolved address of this remote, else next remote
    REMOTE = "remote"  # next remote


def uniform_below(rng: Callable[[int], bytes], bound: int) -> int:
    """An unbiased integer in [0, bound) from `rng` (rejection sampling, bounded tries)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    space = 1 << 64
    limit = space - space % bound
    for _ in range(128):  # each try fails with probability < 2**-32 for bound < 2**32
        value = int.from_bytes(rng(8), "big")
        if value < limit:
            return value % bound
    raise LocalProtocolError("rng keeps returning the same extreme values")


def shuffled(items: Iterable[Remote], rng: Callable[[int], bytes]) -> tuple[Remote, ...]:
    """Fisher–Yates: every permutation equally likely."""
    result = list(items)
    for i in range(len(result) - 1, 0, -1):
        j = uniform_below(rng, i + 1)
        result[i], result[j] = result[j], result[i]
    return tuple(result)


RANDOM_LABEL_BYTES = 6  # misc.c hostname_randomize: 6 random bytes, as 12 hex digits


def randomized_hostname(host: str, rng: Callable[[int], bytes]) -> str:
    """`host` with a random label in front (`remote-random-hostname`): "3f0a9c11d2e4.host"."""
    return f"{rng(RANDOM_LABEL_BYTES).hex()}.{host}"


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def usable_addresses(addresses: Iterable[IPAddress], family: AddressFamily) -> list[IPAddress]:
    """Addresses of the wanted family in the resolver's order, duplicates removed.

    For "any" (`proto udp`/`tcp`) both families, in the order the resolver gave them, as
    OpenVPN 2.6 walks getaddrinfo's list (socket.c openvpn_getaddrinfo with AF_UNSPEC, no
    re-sorting; init.c next_connection_entry takes `ai_next` after each failure): glibc's
    getaddrinfo has already sorted them by RFC 6724 (gai.conf), e.g. IPv6 first when this host
    has an IPv6 route. An unreachable first address costs one failed attempt, then the next
    one (of either family) is tried."""
    unique = list(dict.fromkeys(addresses))
    if family is AddressFamily.IPV4:
        return [a for a in unique if a.version == 4]
    if family is AddressFamily.IPV6:
        return [a for a in unique if a.version == 6]
    return unique


@dataclass(frozen=True, slots=True)
class Target:
    """The remote to try now, and its address once known."""

    remote: Remote
    address: IPAddress | None  # None: resolve `remote.host` first


class RemoteSelector:
    """The remote list with its position, resolved addresses and failure count."""

    def __init__(self, config: Config, rng: Callable[[int], bytes]) -> None:
        if not config.remotes:
            raise ConfigError("no `remote` to connect to")
        self._config = config
        self.remotes = shuffled(config.remotes, rng) if config.remote_random else config.remotes
        self._rng = rng
        self._index = 0
        self._addresses: list[IPAddress] = []
        self._address_index = 0
        self.unsuccessful_attempts = 0
        self._server_backoff = 0.0
        self._resolve_failing_since: float | None = None

    # ------------------------------------------------------------------ the current target

    @property
    def remote(self) -> Remote:
        return self.remotes[self._index]

    @property
    def host_to_resolve(self) -> str:
        """The name the socket goes to: the proxy's if there is one (the proxy resolves the
        remote's name itself), else the remote's."""
        proxy = self._config.proxy
        return proxy.host if proxy is not None else self.remote.host

    def target(self) -> Target:
        """What to do next: connect to `address`, or resolve first if it is None."""
        if self._addresses:
            return Target(self.remote, self._addresses[self._address_index])
        literal = literal_address(self.host_to_resolve)
        if literal is not None and usable_addresses([literal], self.remote.proto.family):
            return Target(self.remote, literal)
        return Target(self.remote, None)

    def lookup_name(self) -> str:
        """The name to look up for the current remote: with `remote-random-hostname`, a fresh
        random label before it at each lookup (defeats DNS caching, as OpenVPN does)."""
        host = self.host_to_resolve
        if self._config.remote_random_hostname and self._config.proxy is None:
            return randomized_hostname(host, self._rng)
        return host

    def connection_request(self, address: IPAddress) -> ConnectionRequested:
        """Open a transport to `address` (the remote's, or the proxy's on the way to it)."""
        remote, proxy = self.remote, self._config.proxy
        if proxy is None:
            return ConnectionRequested(
                address=address, port=remote.port, transport=remote.proto.transport
            )
        via = ProxyRoute(proxy=proxy, host=remote.host, port=remote.port)
        return ConnectionRequested(
            address=address, port=proxy.port, transport=Transport.TCP, via=via
        )

    def resolved(self, addresses: Iterable[IPAddress]) -> IPAddress | None:
        """Record the addresses the runtime resolved; the first usable one, or None if none
        fits the remote's family (then treat it as a resolution failure)."""
        usable = usable_addresses(addresses, self.remote.proto.family)
        self._addresses, self._address_index = usable, 0
        if usable:
            self._resolve_failing_since = None
            return usable[0]
        return None

    # ------------------------------------------------------------------ outcomes

    def succeeded(self) -> None:
        """The tunnel came up: failures are forgotten (OpenVPN resets unsuccessful_attempts)."""
        self.unsuccessful_attempts = 0
        self._resolve_failing_since = None

    def resolution_failed(self, now: float) -> float:
        """Name resolution failed: like any failure, but bounded by `resolv-retry`."""
        if self._resolve_failing_since is None:
            self._resolve_failing_since = now
        limit = self._config.resolv_retry
        if limit is not None and now - self._resolve_failing_since >= limit:
            raise RetriesExhausted(
                f"could not resolve {self.host_to_resolve!r} for {limit:g} s (resolv-retry)"
            )
        return self.failed(Advance.REMOTE)

    def failed(self, advance: Advance = Advance.ADDRESS, *, backoff: float = 0.0) -> float:
        """The current attempt failed: move on and return the pause before the next attempt.

        Raises `RetriesExhausted` when `connect-retry-max` is used up."""
        self.unsuccessful_attempts += 1
        self._server_backoff = max(self._server_backoff, backoff)
        retry_max = self._config.connect_retry_max
        if retry_max is not None and self.unsuccessful_attempts >= retry_max * len(self.remotes):
            raise RetriesExhausted(
                f"every remote was tried {retry_max} time(s) without success (connect-retry-max)"
            )
        self._advance(advance)
        return self.pause()

    def restarted(self) -> float:
        """An established session was lost (ping-restart, RESTART...): reconnect to the same
        remote (re-resolving it) after the plain `connect-retry` pause."""
        self._addresses, self._address_index = [], 0
        return self.pause()

    def pause(self) -> float:
        seconds = self._config.connect_retry
        backoff = self.unsuccessful_attempts // len(self.remotes) - _FREE_ATTEMPTS_PER_REMOTE
        if backoff > 0:
            seconds = max(seconds, 1.0) * (1 << min(backoff, _MAX_SHIFT))
        seconds = max(seconds, self._server_backoff)
        self._server_backoff = 0.0
        return min(seconds, self._config.connect_retry_max_delay)

    def _advance(self, advance: Advance) -> None:
        if advance is Advance.NO:
            return
        if advance is Advance.ADDRESS and self._address_index + 1 < len(self._addresses):
            self._address_index += 1
            return
        self._index = (self._index + 1) % len(self.remotes)
        self._addresses, self._address_index = [], 0
