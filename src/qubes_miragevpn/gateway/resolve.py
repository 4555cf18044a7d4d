"""The server's name, resolved through the uplink by the daemon alone (marked DNS sockets).

In a VPN qube nothing but the daemon may use the uplink, and the firewall knows the daemon's
packets by their socket mark. libc's resolver (getaddrinfo) cannot mark its sockets, so the
daemon asks the uplink's DNS servers (/qubes-primary-dns, /qubes-secondary-dns) itself, over
UDP from a socket with SO_MARK, while the policy is Connecting with `resolve_via_uplink_dns`.
Then the session gets the profile with every hostname `remote` replaced by its addresses (with
a proxy: the proxy's name replaced by its address; the server's name goes to the proxy).

    encode_query(name, qtype, query_id)       pure: one RFC 1035 query (RD set)
    decode_answers(data, query_id, qtype)     pure: the A/AAAA addresses of a response
    await resolve(host, servers, mark=...)    IO: A then AAAA, each server in turn, bounded

Only what a stub needs: no EDNS, no TCP fallback (an A/AAAA answer for a VPN server fits in
512 bytes), CNAME chains followed by taking every A/AAAA record in the answer section.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import replace

from miragevpn.config.model import Config, Remote
from miragevpn.remotes import usable_addresses

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
QTYPE_A = 1
QTYPE_AAAA = 28
QCLASS_IN = 1
TIMEOUT = 2.0  # seconds per server and query type
SO_MARK = getattr(socket, "SO_MARK", 36)
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class ResolveError(Exception):
    """The name could not be resolved (no answer, refused, malformed): whose fault it says."""


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def encode_query(name: str, qtype: int, query_id: int) -> bytes:
    """A standard query for `name` (recursion desired)."""
    try:
        encoded = [label.encode("idna") for label in name.rstrip(".").split(".")]
    except UnicodeError:
        encoded = []
    if not encoded or not all(0 < len(label) < 64 for label in encoded):
        raise ResolveError(f"{name!r} is not a valid host name")
    qname = b"".join(bytes([len(label)]) + label for label in encoded)
    return _HEADER.pack(query_id, 0x0100, 1, 0, 0, 0) + qname + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    for _ in range(128):  # bounded: a loop of pointers is malformed
        if offset >= len(data):
            raise ResolveError("truncated name in the DNS response")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
    raise ResolveError("name too long in the DNS response")


def decode_answers(data: bytes, query_id: int, qtype: int) -> list[IPAddress]:
    """The addresses of type `qtype` in a response to `query_id`; raises ResolveError when the
    response is not ours, says the name does not exist, or is malformed."""
    if len(data) < _HEADER.size:
        raise ResolveError("DNS response too short")
    rid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    if rid != query_id or not flags & 0x8000:
        raise ResolveError("not an answer to our query")
    rcode = flags & 0x000F
    if rcode == 3:
        raise ResolveError("the name does not exist (NXDOMAIN)")
    if rcode != 0:
        raise ResolveError(f"the DNS server refused (rcode {rcode})")
    offset = _HEADER.size
    try:
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4
        found: list[IPAddress] = []
        for _ in range(ancount):
            offset = _skip_name(data, offset)
            rtype, rclass, _, length = _RR.unpack_from(data, offset)
            offset += _RR.size
            rdata = data[offset : offset + length]
            offset += length
            if len(rdata) != length:
                raise ResolveError("truncated record in the DNS response")
            if rclass == QCLASS_IN and rtype == qtype == QTYPE_A and length == 4:
                found.append(ipaddress.IPv4Address(rdata))
            elif rclass == QCLASS_IN and rtype == qtype == QTYPE_AAAA and length == 16:
                found.append(ipaddress.IPv6Address(rdata))
    except struct.error as e:
        raise ResolveError(f"malformed DNS response: {e}") from None
    return found


async def _ask(
    server: IPAddress, query: bytes, *, mark: int | None, timeout: float, port: int
) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET if server.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.connect((str(server), port))
        await loop.sock_sendall(sock, query)
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)


async def resolve(
    host: str,
    servers: Sequence[IPAddress],
    *,
    mark: int | None,
    timeout: float = TIMEOUT,
    port: int = 53,
) -> list[IPAddress]:
    """The IPv4 then IPv6 addresses of `host`, asking `servers` in order (marked sockets)."""
    if not servers:
        raise ResolveError(f"cannot resolve {host}: no uplink DNS server in the facts")
    found: list[IPAddress] = []
    errors: list[str] = []
    for qtype in (QTYPE_A, QTYPE_AAAA):
        for server in servers:
            query_id = int.from_bytes(os.urandom(2), "big")
            try:
                query = encode_query(host, qtype, query_id)
                reply = await _ask(server, query, mark=mark, timeout=timeout, port=port)
                found += [a for a in decode_answers(reply, query_id, qtype) if a not in found]
                break
            except (OSError, TimeoutError, ResolveError) as e:
                errors.append(f"{server}: {e or 'no answer'}")
    if not found:
        raise ResolveError(f"cannot resolve {host} through the uplink ({'; '.join(errors)})")
    return found


def hostnames(config: Config) -> list[str]:
    """The names the daemon's socket needs addresses for, in order, once each: the remotes'
    hostnames, or with a proxy only the proxy's (the remotes' names go to the proxy
    unresolved: over Tor, the exit resolves them and our uplink never sees them)."""
    if config.proxy is not None:
        return [] if is_address(config.proxy.host) else [config.proxy.host]
    return list(dict.fromkeys(r.host for r in config.remotes if not is_address(r.host)))


def with_addresses(config: Config, resolved: dict[str, list[IPAddress]]) -> Config:
    """`config` with each hostname remote replaced by one remote per resolved address of its
    family (in order; `udp6`/`tcp4`-style protos keep only theirs); a hostname without such
    addresses is dropped. With a proxy, the proxy's hostname is
    replaced by its first address and the remotes are left alone; an unresolved proxy
    leaves no remote to connect to."""
    if config.proxy is not None:
        if is_address(config.proxy.host):
            return config
        found = resolved.get(config.proxy.host, [])
        if not found:
            return replace(config, remotes=())
        return replace(config, proxy=replace(config.proxy, host=str(found[0])))
    remotes: list[Remote] = []
    for remote in config.remotes:
        if is_address(remote.host):
            remotes.append(remote)
            continue
        addresses = usable_addresses(resolved.get(remote.host, []), remote.proto.family)
        remotes += [replace(remote, host=str(a)) for a in addresses]
    return replace(config, remotes=tuple(remotes))
