"""Statistics and tunnel state in words, one line each: for logs and for a status socket.

Pure functions from values to text. No addresses of the server, no keys; the tunnel's own
addresses and routes are what a person needs to see (`describe_settings`).

Counters are read by name and defensively (a counter the engine does not have is left out), so
these keep working while the engine's `Stats` grows or moves. Drop reasons are rendered as
`getattr(reason, "value", reason)` (contract 2: the engine's `DropReason` enum, or a plain
string), with the older class-name keys ("DecodeError") said in words too.
"""

from __future__ import annotations

from collections.abc import Mapping

from miragevpn.config.model import HttpProxy
from miragevpn.events import ProxyRoute, TunnelSettings

from .hooks import Endpoint, Phase, SessionState
from .transport import UdpStats

# Older engines counted a packet that failed to decode under the error's class name.
LEGACY_DROP_WORDS = {
    "DecodeError": "malformed",
    "AuthenticationError": "failed authentication",
    "ReplayError": "replayed",
}


def drop_reason_words(reason: object) -> str:
    """A drop reason in words: the enum's value, a plain phrase, or an old class-name key."""
    text = str(getattr(reason, "value", reason))
    return LEGACY_DROP_WORDS.get(text, text)


def describe_settings(ifname: str, s: TunnelSettings) -> str:
    """What the tunnel looks like: device, addresses, MTU, cipher, routes, DHCP options."""
    parts = [f"{ifname}"]
    if s.ipv4 is not None:
        parts.append(f"{s.ipv4}" + (f" peer {s.ipv4_peer}" if s.ipv4_peer else ""))
    if s.ipv6 is not None:
        parts.append(str(s.ipv6))
    parts.append(f"mtu {s.mtu}")
    parts.append(f"cipher {s.cipher} ({s.key_derivation})")
    if s.routes:
        parts.append("routes " + ", ".join(str(r.network) for r in s.routes))
    if s.redirect_gateway_ipv4 or s.redirect_gateway_ipv6:
        parts.append("all traffic through the tunnel")
    if s.dhcp_options:
        parts.append(
            "dhcp " + ", ".join(f"{o.kind} {o.value or ''}".strip() for o in s.dhcp_options)
        )
    return ", ".join(parts)


def describe_duration(seconds: float) -> str:
    """ "4s", "2m 5s", "3h 0m", "2d 1h": two units at most."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def describe_via(via: ProxyRoute | None) -> str:
    """The words after a proxy's address: " (SOCKS5 proxy) to vpn.example port 443"; never
    the proxy's credentials. Empty without a proxy."""
    if via is None:
        return ""
    kind = "HTTP proxy" if isinstance(via.proxy, HttpProxy) else "SOCKS5 proxy"
    return f" ({kind}) to {via.host} port {via.port}"


def describe_endpoint(endpoint: Endpoint) -> str:
    where = f"{endpoint.address} port {endpoint.port} over {endpoint.transport.value.upper()}"
    return where + describe_via(endpoint.via)


def describe_state(state: SessionState, now: float, ifname: str | None = None) -> str:
    """Where the session is, for how long, with whom: "tunnel up for 2m 5s with 192.0.2.1
    port 1194 over UDP: tun0, 10.8.0.2/24, ...". `now` is the session loop's clock."""
    text = f"{state.phase.value} for {describe_duration(now - state.since)}"
    if state.endpoint is not None and state.phase in (
        Phase.CONNECTING,
        Phase.NEGOTIATING,
        Phase.UP,
    ):
        text += (" to " if state.phase is Phase.CONNECTING else " with ") + describe_endpoint(
            state.endpoint
        )
    if state.phase is Phase.UP and state.settings is not None and ifname is not None:
        text += ": " + describe_settings(ifname, state.settings)
    elif state.detail:
        text += f": {state.detail}"
    return text


def describe_stats(stats: object) -> str:
    """The engine's `client.stats` in one line starting with "statistics: "."""

    def count(name: str) -> int | None:
        value = getattr(stats, name, None)
        return value if isinstance(value, int) else None

    parts: list[str] = []
    for direction, packets, size in (
        ("in", "packets_received", "bytes_received"),
        ("out", "packets_sent", "bytes_sent"),
    ):
        n, b = count(packets), count(size)
        if n is not None:
            parts.append(f"{direction} {n} packets" + (f" ({b} bytes)" if b is not None else ""))
    tunnel_in, tunnel_out = count("tunnel_packets_in"), count("tunnel_packets_out")
    if tunnel_in is not None and tunnel_out is not None:
        parts.append(f"tunnel packets in {tunnel_in} out {tunnel_out}")
    inflated = getattr(stats, "decompression", None)
    decompressed = getattr(inflated, "packets", 0)
    if isinstance(decompressed, int) and decompressed:
        before, after = getattr(inflated, "bytes_in", "?"), getattr(inflated, "bytes_out", "?")
        parts.append(f"decompressed {decompressed} packets ({before} -> {after} bytes)")
    dropped = getattr(stats, "dropped", None)
    if isinstance(dropped, Mapping):
        totals: dict[str, int] = {}
        for reason, n in dropped.items():
            if n:
                words = drop_reason_words(reason)
                totals[words] = totals.get(words, 0) + int(n)
        total = sum(totals.values())
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(totals.items()))
        parts.append(f"dropped {total}" + (f" ({detail})" if detail else ""))
    return "statistics: " + (", ".join(parts) if parts else "not available")


def describe_udp_stats(stats: UdpStats) -> str:
    """The UDP socket's counters (not "statistics:": that line is the engine's)."""
    batches = stats.receive_batches or 1
    return (
        f"UDP socket: received {stats.received} in {stats.receive_batches} wake-ups "
        f"({stats.received / batches:.1f} per wake-up), sent {stats.sent} "
        f"({stats.gso_sends} GSO sendmsg), errors {stats.receive_errors} in "
        f"{stats.send_errors} out, waited for the socket {stats.queued}, "
        f"dropped on a full queue {stats.queue_dropped}"
    )
