"""Forget tracked connections, so that no flow set up before our firewall carries on past it.

Qubes' `qubes-nat-accel` flowtable moves an AppVM's TCP/UDP flow to a fast path at ingress once
the flow is set up; from then on its packets skip the forward hook, so a kill switch installed
later never sees them. That cannot happen after a normal boot (`qubes-miragevpn block` runs
before forwarding is switched on), but it can when the service is enabled, or the daemon
started after an `unblock`, while AppVMs are online. Flushing the connection tracking table
ends those flows (a flowtable entry lives only as long as its conntrack entry): their next
packet is new again and meets the forward chain.

    apply_policy(Blocked(), facts)      # first, so every new packet meets the kill switch
    flush_connections()                 # then, in sys-vpn's network namespace

The flush acts on the network namespace of the calling thread: one NETLINK_NETFILTER socket
(`nlmsg.conntrack_count`, then `conntrack_flush` for IPv4 and IPv6, as `conntrack -C` and
`conntrack -F` send them), blocking, each answer awaited at most REQUEST_TIMEOUT seconds (the
daemon calls it in a worker thread).
"""

from __future__ import annotations

import logging
import socket

from .. import nlmsg
from ..rtnl import MAX_DATAGRAMS, RECV_SIZE, REQUEST_TIMEOUT, netlink_socket

log = logging.getLogger(__name__)


class ConntrackError(RuntimeError):
    """The kernel refused to flush (no CAP_NET_ADMIN, no nf_conntrack_netlink)."""


def flush_connections() -> int:
    """Delete every conntrack entry of this network namespace; return how many there were."""
    log.info("firewall: flushing connection tracking (ends flows that predate our firewall)")
    try:
        sock = netlink_socket(nlmsg.NETLINK_NETFILTER)
        sock.settimeout(REQUEST_TIMEOUT)
    except OSError as e:
        raise ConntrackError(f"cannot open the conntrack netlink socket: {e}") from e
    with sock:
        try:
            stats = _ask(sock, 1, nlmsg.conntrack_count())
            if len(stats) != 1:
                raise nlmsg.MalformedReply(f"{len(stats)} statistics messages instead of one")
            before = nlmsg.decode_conntrack_count(stats[0])
            _ask(sock, 2, nlmsg.conntrack_flush(socket.AF_INET))
            _ask(sock, 3, nlmsg.conntrack_flush(socket.AF_INET6))
        except nlmsg.NetlinkError as e:
            raise ConntrackError(f"the kernel refused to flush connection tracking: {e}") from e
        except (OSError, nlmsg.MalformedReply) as e:  # no answer, or not one we can read
            raise ConntrackError(f"no usable answer from the kernel's conntrack: {e}") from e
    return before


def _ask(sock: socket.socket, seq: int, request: nlmsg.Request) -> list[nlmsg.Message]:
    """One request on the blocking socket; the kernel's answers (raises NetlinkError)."""
    sock.sendall(nlmsg.encode_request(request, seq))
    reply = nlmsg.Reply(seq, request.words)
    for _ in range(MAX_DATAGRAMS):
        if reply.receive(sock.recv(RECV_SIZE)):
            return reply.answers
    raise OSError(f"the kernel's answer to {request.words} went on past {MAX_DATAGRAMS} datagrams")
