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

The flush acts on the network namespace of the calling thread.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ConntrackError(RuntimeError):
    """The kernel refused to flush (no CAP_NET_ADMIN, no nf_conntrack_netlink)."""


def flush_connections() -> int:
    """Delete every conntrack entry of this network namespace; return how many there were."""
    from pyroute2 import Conntrack

    log.info("firewall: flushing connection tracking (ends flows that predate our firewall)")
    try:
        ct = Conntrack()
    except OSError as e:
        raise ConntrackError(f"cannot open the conntrack netlink socket: {e}") from e
    try:
        before = int(ct.count())
        reply = ct.flush()
        if reply is not None:  # pyroute2 0.7 returns a generator that sends only when consumed
            for _ in reply:
                pass
    except OSError as e:
        raise ConntrackError(f"the kernel refused to flush connection tracking: {e}") from e
    finally:
        ct.close()
    return before
