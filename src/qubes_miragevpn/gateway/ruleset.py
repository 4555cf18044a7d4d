"""Pure functions from (policy, facts) to the libnftables JSON document that installs it.

Everything lives in one table of our own, `inet qubes-miragevpn`; Qubes' `ip qubes`,
`ip6 qubes`, `qubes-firewall` and `qubes-nat-accel` tables are never named. The document
replaces our table in one transaction (add, delete, add: the kernel applies all or nothing), so
there is no moment without a policy. The table has no `owner` flag: it outlives the daemon, and
only `remove_document()` (the `unblock` command) takes it away.

Chains (numbers are netfilter priorities; Qubes' own are in the comment on the right):

    prerouting      filter  prerouting  -310  accept   anti-spoofing     (qubes antispoof: -300)
    forward         filter  forward      -10  drop     the kill switch   (qubes forward: 0,
                                                                          nat-accel flow add: 5)
    input           filter  input        -10  accept   uplink -> qube    (qubes input: 0)
    output          filter  output       -10  drop     qube -> anywhere
    dns-redirect    nat     prerouting  -110  accept   virtual DNS       (qubes dnat-dns: -100)
    tunnel-nat      nat     postrouting   90  accept   masquerade        (qubes postrouting: 100)
    refuse          (regular chain: TCP reset, else ICMP administratively prohibited)

Each rule carries its sentence of docs/security.md as its comment, so `nft list ruleset` reads
like the specification, and the golden tests hold the two together. Builders produce plain
`dict`/`list` values; nothing here formats a rule as text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from qubes_miragevpn.gateway.policy import (
    Blocked,
    Connected,
    Connecting,
    Endpoint,
    Facts,
    IPAddress,
    Policy,
    Report,
    Tunnel,
)

Json: TypeAlias = Any  # one node of the libnftables JSON schema (dict, list, str, int, None)

FAMILY = "inet"
TABLE = "qubes-miragevpn"

PRIO_PREROUTING = -310  # before Qubes' anti-spoofing (raw, -300) and conntrack (-200)
PRIO_FILTER = -10  # before Qubes' filter chains (0) and the qubes-nat-accel flow add (filter+5)
PRIO_DNS_REDIRECT = -110  # before Qubes' dnat-dns (dstnat, -100): the first NAT binding wins
PRIO_MASQUERADE = 90  # before Qubes' postrouting masquerade (srcnat, 100)

SET_APPVM4 = "appvm-ipv4"
SET_APPVM6 = "appvm-ipv6"
SET_VIRTUAL_DNS = "qubes-virtual-dns"
# The blocked-traffic report: refused flows per (AppVM, protocol, destination, port), dynamic.
SET_BLOCKED4 = "blocked-ipv4"
SET_BLOCKED6 = "blocked-ipv6"
REPORT_WINDOW = 30  # seconds: with a queue, one packet per AppVM and destination in this window
COUNTER_WINDOW = 3600  # seconds: without one, a counted destination is forgotten after an idle hour
REPORT_SET_SIZE = 4096  # elements; when full, flows are refused without being reported

# TCP MSS = MTU - IP header - TCP header (RFC 879; 20 + 20 for IPv4, 40 + 20 for IPv6).
MSS_OVERHEAD4 = 40
MSS_OVERHEAD6 = 60
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """A chain of our table: base chains have a type, hook, priority and policy."""

    name: str
    type: str | None = None
    hook: str | None = None
    prio: int | None = None
    policy: str | None = None


CHAINS = (
    ChainSpec("refuse"),
    ChainSpec("prerouting", "filter", "prerouting", PRIO_PREROUTING, "accept"),
    ChainSpec("forward", "filter", "forward", PRIO_FILTER, "drop"),
    ChainSpec("input", "filter", "input", PRIO_FILTER, "accept"),
    ChainSpec("output", "filter", "output", PRIO_FILTER, "drop"),
    ChainSpec("dns-redirect", "nat", "prerouting", PRIO_DNS_REDIRECT, "accept"),
    ChainSpec("tunnel-nat", "nat", "postrouting", PRIO_MASQUERADE, "accept"),
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its chain, its statements, and its sentence from docs/security.md."""

    chain: str
    expr: tuple[Json, ...]
    comment: str

    @property
    def verdict(self) -> str:
        """The key of the last statement (accept, drop, goto, dnat, mangle, masquerade...)."""
        return str(next(iter(self.expr[-1])))


# --- expression builders (libnftables JSON schema, libnftables-json(5)) ---------------------


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def match(left: Json, right: Json, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def anonymous_set(*items: Json) -> Json:
    return {"set": list(items)}


def named_set(name: str) -> str:
    return f"@{name}"


def ip_field(address: IPAddress | ipaddress.IPv6Network, field: str) -> Json:
    return payload("ip" if address.version == 4 else "ip6", field)


def address_value(address: IPAddress | ipaddress.IPv6Network) -> Json:
    if isinstance(address, ipaddress.IPv6Network):
        return {"prefix": {"addr": str(address.network_address), "len": address.prefixlen}}
    return str(address)


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}
COUNTER: Json = {"counter": None}
REFUSE: Json = {"goto": {"target": "refuse"}}


def mss_clamp(mss: int) -> tuple[Json, ...]:
    """SYNs whose MSS option exceeds `mss` get `mss` (the SYN and SYN-ACK both carry one)."""
    option = {"tcp option": {"name": "maxseg", "field": "size"}}
    return (
        match({"&": [payload("tcp", "flags"), ["syn", "rst"]]}, "syn"),
        match(option, mss, ">"),
        {"mangle": {"key": option, "value": mss}},
    )


# --- rules per chain ----------------------------------------------------------------------


def _refuse_rules() -> Iterator[Rule]:
    yield Rule(
        "refuse",
        (match(meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}}),
        "refused TCP is answered with a TCP reset",
    )
    yield Rule(
        "refuse",
        ({"reject": {"type": "icmpx", "expr": "admin-prohibited"}},),
        "other refused packets are answered with ICMP administratively prohibited",
    )


def _antispoof_rules(facts: Facts) -> Iterator[Rule]:
    """Per address family, once /connected-ips (-ips6) lists an address of it: before that (at
    boot, or a QubesDB without IPv6) the forward chain refuses that family's AppVM packets
    unless they go into the tunnel, and Qubes' own anti-spoofing (bound to each vif) runs."""
    v4 = any(a.version == 4 for a in facts.connected_ips)
    v6 = any(a.version == 6 for a in facts.connected_ips)
    group = match(meta("iifgroup"), facts.appvm_group)
    other = match(meta("iifgroup"), facts.appvm_group, "!=")
    if v4:
        yield Rule(
            "prerouting",
            (group, match(payload("ip", "saddr"), named_set(SET_APPVM4), "!="), COUNTER, DROP),
            "IPv4 from an AppVM interface with a source not in /connected-ips is dropped",
        )
    if v6:
        yield Rule(
            "prerouting",
            (
                group,
                match(payload("ip6", "saddr"), named_set(SET_APPVM6), "!="),
                match(payload("ip6", "saddr"), address_value(LINK_LOCAL6), "!="),
                COUNTER,
                DROP,
            ),
            "IPv6 from an AppVM interface with a source neither in /connected-ips6 nor link-local"
            " is dropped",
        )
    if v4:
        yield Rule(
            "prerouting",
            (other, match(payload("ip", "saddr"), named_set(SET_APPVM4)), COUNTER, DROP),
            "IPv4 with an AppVM's source address arriving by another interface is dropped",
        )
    if v6:
        yield Rule(
            "prerouting",
            (other, match(payload("ip6", "saddr"), named_set(SET_APPVM6)), COUNTER, DROP),
            "IPv6 with an AppVM's source address arriving by another interface is dropped",
        )


def _forward_rules(policy: Policy, facts: Facts) -> Iterator[Rule]:
    from_appvm = match(meta("iifgroup"), facts.appvm_group)
    if isinstance(policy, Connected):
        tunnel = policy.tunnel
        if not tunnel.dns4:
            yield Rule(
                "forward",
                (
                    from_appvm,
                    match(
                        {"ct": {"key": "ip daddr", "dir": "original"}}, named_set(SET_VIRTUAL_DNS)
                    ),
                    COUNTER,
                    REFUSE,
                ),
                "AppVM packets to Qubes' virtual DNS are refused: the tunnel has no IPv4 DNS",
            )
        yield from _mss_rules(tunnel)
        to_tun = [from_appvm, match(meta("oifname"), tunnel.device)]
        if not tunnel.ipv6:
            to_tun.append(match(meta("nfproto"), "ipv4"))
        yield Rule(
            "forward",
            (*to_tun, COUNTER, ACCEPT),
            "AppVM packets leaving by the tunnel device are accepted"
            + ("" if tunnel.ipv6 else " (IPv4 only: the tunnel has no IPv6)"),
        )
        yield Rule(
            "forward",
            (
                match(meta("iifname"), tunnel.device),
                match(meta("oifgroup"), facts.appvm_group),
                match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                COUNTER,
                ACCEPT,
            ),
            "replies from the tunnel device to AppVMs are accepted",
        )
    if facts.report is not None:
        yield from _report_rules(facts.report, from_appvm)
    yield Rule(
        "forward",
        (from_appvm, COUNTER, REFUSE),
        "every other packet from an AppVM is refused",
    )


def flow_key(family: str) -> Json:
    """(source, protocol, destination, port) of a packet: the blocked sets' element."""
    return {
        "concat": [
            payload(family, "saddr"),
            meta("l4proto"),
            payload(family, "daddr"),
            payload("th", "dport"),
        ]
    }


def _report_rules(report: Report, from_appvm: Json) -> Iterator[Rule]:
    """Just before the last rule of `forward`: what is about to be refused is reported first.
    Only new TCP and UDP flows (they have a port); ICMP and the rest are refused unreported."""
    for family, nfproto, name, version in (
        ("ip", "ipv4", SET_BLOCKED4, "IPv4"),
        ("ip6", "ipv6", SET_BLOCKED6, "IPv6"),
    ):
        new_flow = (
            from_appvm,
            match(meta("nfproto"), nfproto),
            match(meta("l4proto"), anonymous_set("tcp", "udp")),
            match({"ct": {"key": "state"}}, "new", "in"),
        )
        key = flow_key(family)
        if report.queue is None:
            yield Rule(
                "forward",
                (*new_flow, {"set": {"op": "update", "elem": key, "set": named_set(name)}}),
                f"new refused {version} TCP/UDP flows from an AppVM are counted per AppVM and"
                " destination",
            )
            continue
        yield Rule(
            "forward",
            (
                *new_flow,
                match(key, named_set(name), "!="),
                {"limit": {"rate": report.rate, "per": "second", "burst": 2 * report.rate}},
                {"set": {"op": "add", "elem": key, "set": named_set(name)}},
                {"queue": {"num": report.queue}},
            ),
            f"the first packet of a new refused {version} TCP/UDP flow from an AppVM goes to"
            f" the daemon's queue {report.queue}",
        )


def _mss_rules(tunnel: Tunnel) -> Iterator[Rule]:
    families = [("ipv4", MSS_OVERHEAD4)] + ([("ipv6", MSS_OVERHEAD6)] if tunnel.ipv6 else [])
    for nfproto, overhead in families:
        mss = tunnel.mtu - overhead
        for direction in ("oifname", "iifname"):
            way = "to" if direction == "oifname" else "from"
            yield Rule(
                "forward",
                (
                    match(meta(direction), tunnel.device),
                    match(meta("nfproto"), nfproto),
                    *mss_clamp(mss),
                ),
                f"TCP MSS of {nfproto} SYNs {way} the tunnel is clamped to the tunnel MTU"
                f" minus {overhead}",
            )


def _uplink_destinations(policy: Policy, facts: Facts) -> list[tuple[IPAddress, Json, int]]:
    """(address, protocol match value, port) the daemon's marked sockets may reach."""
    if isinstance(policy, Blocked):
        return []
    if isinstance(policy, Connected):
        endpoints: tuple[Endpoint, ...] = (policy.tunnel.endpoint,)
        resolve = False
    else:
        endpoints, resolve = policy.endpoints, policy.resolve_via_uplink_dns
    out: list[tuple[IPAddress, Json, int]] = [(e.address, e.proto, e.port) for e in endpoints]
    if resolve:
        out += [(dns, anonymous_set("udp", "tcp"), 53) for dns in facts.uplink_dns]
    return out


def _input_rules(policy: Policy, facts: Facts) -> Iterator[Rule]:
    uplink = match(meta("iifname"), facts.uplink)
    destinations = _uplink_destinations(policy, facts)
    if destinations:
        yield Rule(
            "input",
            (
                uplink,
                match({"ct": {"key": "mark"}}, facts.socket_mark),
                match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                COUNTER,
                ACCEPT,
            ),
            "uplink replies to connections the daemon's marked sockets opened are accepted",
        )
    if any(address.version == 6 for address, _, _ in destinations):
        yield Rule(
            "input",
            (uplink, match(payload("icmpv6", "type"), _ND_TYPES), COUNTER, ACCEPT),
            "IPv6 neighbour discovery on the uplink is accepted (an IPv6 endpoint is allowed)",
        )
    yield Rule(
        "input",
        (uplink, COUNTER, DROP),
        "every other packet from the uplink to the qube is dropped",
    )


_ND_TYPES = anonymous_set("nd-neighbor-solicit", "nd-neighbor-advert")


def _output_rules(policy: Policy, facts: Facts) -> Iterator[Rule]:
    yield Rule("output", (match(meta("oifname"), "lo"), ACCEPT), "loopback is accepted")
    yield Rule(
        "output",
        (match(meta("oifgroup"), facts.appvm_group), ACCEPT),
        "packets from the qube to AppVM interfaces (replies, refusals) are accepted",
    )
    if isinstance(policy, Connected):
        yield Rule(
            "output",
            (match(meta("oifname"), policy.tunnel.device), COUNTER, ACCEPT),
            "packets from the qube into the tunnel device are accepted",
        )
    uplink = match(meta("oifname"), facts.uplink)
    marked = match(meta("mark"), facts.socket_mark)
    destinations = _uplink_destinations(policy, facts)
    for address, proto, port in destinations:
        what = "DNS server" if port == 53 and isinstance(proto, dict) else "server endpoint"
        yield Rule(
            "output",
            (
                uplink,
                marked,
                match(ip_field(address, "daddr"), address_value(address)),
                match(meta("l4proto"), proto),
                match(payload("th", "dport"), port),
                {"mangle": {"key": {"ct": {"key": "mark"}}, "value": facts.socket_mark}},
                COUNTER,
                ACCEPT,
            ),
            f"marked packets to the uplink {what} {_endpoint_text(address, proto, port)}"
            " are accepted",
        )
    if any(address.version == 6 for address, _, _ in destinations):
        yield Rule(
            "output",
            (uplink, match(payload("icmpv6", "type"), _ND_TYPES), COUNTER, ACCEPT),
            "IPv6 neighbour discovery on the uplink is accepted (an IPv6 endpoint is allowed)",
        )
    yield Rule(
        "output",
        (uplink, COUNTER, REFUSE),
        "every other packet from the qube to the uplink is refused (the sender learns at once)",
    )


def _endpoint_text(address: IPAddress, proto: Json, port: int) -> str:
    protocol = proto if isinstance(proto, str) else "/".join(proto["set"])
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{port}/{protocol}"


def _dns_redirect_rules(policy: Policy, facts: Facts) -> Iterator[Rule]:
    if not isinstance(policy, Connected) or not policy.tunnel.dns4:
        return
    servers = policy.tunnel.dns4
    for index, virtual in enumerate(facts.virtual_dns):
        target = servers[index % len(servers)]
        yield Rule(
            "dns-redirect",
            (
                match(meta("iifgroup"), facts.appvm_group),
                match(payload("ip", "daddr"), str(virtual)),
                match(meta("l4proto"), anonymous_set("udp", "tcp")),
                match(payload("th", "dport"), 53),
                COUNTER,
                {"dnat": {"family": "ip", "addr": str(target)}},
            ),
            f"AppVM DNS to Qubes' virtual DNS {virtual} goes to the tunnel's DNS {target}",
        )


def _masquerade_rules(policy: Policy) -> Iterator[Rule]:
    if isinstance(policy, Connected):
        yield Rule(
            "tunnel-nat",
            (match(meta("oifname"), policy.tunnel.device), COUNTER, {"masquerade": None}),
            "packets leaving by the tunnel device are masqueraded to the tunnel address",
        )


def rules(policy: Policy, facts: Facts) -> tuple[Rule, ...]:
    """Every rule of our table for (policy, facts), in chain order."""
    return (
        *_refuse_rules(),
        *_antispoof_rules(facts),
        *_forward_rules(policy, facts),
        *_input_rules(policy, facts),
        *_output_rules(policy, facts),
        *_dns_redirect_rules(policy, facts),
        *_masquerade_rules(policy),
    )


@dataclass(frozen=True, slots=True)
class SetSpec:
    """A named set. Dynamic ones (`timeout` set) are filled by rules, not by the policy."""

    name: str
    type: str
    elements: tuple[str, ...]
    timeout: int | None = None
    counter: bool = False


def _flow_type(address: str) -> str:
    return f"{address} . inet_proto . {address} . inet_service"


def sets(facts: Facts) -> tuple[SetSpec, ...]:
    """The named sets: AppVM addresses (anti-spoofing), Qubes' virtual DNS addresses, and
    with a report the refused flows (dynamic)."""
    v4 = sorted((a for a in facts.connected_ips if isinstance(a, ipaddress.IPv4Address)), key=int)
    v6 = sorted((a for a in facts.connected_ips if isinstance(a, ipaddress.IPv6Address)), key=int)
    return (
        SetSpec(SET_APPVM4, "ipv4_addr", tuple(map(str, v4))),
        SetSpec(SET_APPVM6, "ipv6_addr", tuple(map(str, v6))),
        SetSpec(SET_VIRTUAL_DNS, "ipv4_addr", tuple(map(str, sorted(set(facts.virtual_dns))))),
        *_report_sets(facts.report),
    )


def _report_sets(report: Report | None) -> tuple[SetSpec, ...]:
    if report is None:
        return ()
    counted = report.queue is None
    timeout = COUNTER_WINDOW if counted else REPORT_WINDOW
    return tuple(
        SetSpec(name, _flow_type(address), (), timeout=timeout, counter=counted)
        for name, address in ((SET_BLOCKED4, "ipv4_addr"), (SET_BLOCKED6, "ipv6_addr"))
    )


def _table() -> Json:
    return {"table": {"family": FAMILY, "name": TABLE}}


def build_document(policy: Policy, facts: Facts) -> Json:
    """The libnftables JSON document replacing our table with (policy, facts), atomically."""
    commands: list[Json] = [
        {"metainfo": {"json_schema_version": 1}},
        {"add": _table()},
        {"delete": _table()},
        {"add": _table()},
    ]
    for spec in sets(facts):
        body: dict[str, Json] = {
            "family": FAMILY,
            "table": TABLE,
            "name": spec.name,
            "type": spec.type.split(" . ") if " . " in spec.type else spec.type,
        }
        if spec.elements:
            body["elem"] = list(spec.elements)
        if spec.timeout is not None:  # nftables adds `dynamic` itself (rules update the set)
            body.update(flags=["timeout"], timeout=spec.timeout, size=REPORT_SET_SIZE)
        if spec.counter:
            body["stmt"] = [COUNTER]
        commands.append({"add": {"set": body}})
    for chain in CHAINS:
        commands.append({"add": {"chain": chain_json(chain)}})
    for rule in rules(policy, facts):
        commands.append(
            {
                "add": {
                    "rule": {
                        "family": FAMILY,
                        "table": TABLE,
                        "chain": rule.chain,
                        "expr": list(rule.expr),
                        "comment": rule.comment,
                    }
                }
            }
        )
    return {"nftables": commands}


def chain_json(chain: ChainSpec) -> Json:
    body: dict[str, Json] = {"family": FAMILY, "table": TABLE, "name": chain.name}
    if chain.type is not None:
        body.update(type=chain.type, hook=chain.hook, prio=chain.prio, policy=chain.policy)
    return body


def remove_document() -> Json:
    """The document removing our table, whether or not it exists (add, then delete)."""
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": _table()},
            {"delete": _table()},
        ]
    }


def list_document() -> Json:
    """The document asking libnftables for our table (the read-back)."""
    return {"nftables": [{"list": _table()}]}


def policy_name(policy: Policy) -> str:
    match policy:
        case Blocked():
            return "blocked"
        case Connecting():
            return "connecting"
        case Connected():
            return "connected"
