"""The setup people use instead of our gateway: the `openvpn` client in sys-vpn behind a small
nftables kill switch (the benchmark's control case, `bench/gateway.py`).

The kill switch is a table of its own, `inet openvpn-killswitch`, beside Qubes' tables (which
already masquerade everything leaving sys-vpn and drop forwarded traffic that does not come
from a vif), written as libnftables JSON data, applied in one transaction:

    forward  filter, priority -10: a packet from an AppVM (iifname "vif*") that would leave
             by any interface but tun0 is dropped (before Qubes' forward chain and its
             nat-accel flow offload)
    output   filter, priority -10, policy drop: sys-vpn itself may send to lo, to tun0, to
             its AppVMs (vif*) and, on the uplink, only to the server's endpoint

That is the usual hand-made recipe ("AppVMs forward into tun0 only; sys-vpn's own output goes
to the VPN server only"), here as nftables rules; it has no anti-spoofing, DNS redirection or
MSS clamping of its own (openvpn's default mssfix clamps TCP inside the tunnel), and nothing for
IPv6 beyond dropping it on the uplink. The table outlives openvpn
(a crashed client leaves it closed) and is removed with `remove_document()`.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

FAMILY = "inet"
TABLE = "openvpn-killswitch"
PRIORITY = -10


def _match(key: str, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def _payload(protocol: str, field: str, right: Any) -> dict[str, Any]:
    left = {"payload": {"protocol": protocol, "field": field}}
    return {"match": {"op": "==", "left": left, "right": right}}


def _rule(chain: str, *expr: dict[str, Any], comment: str) -> dict[str, Any]:
    rule = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}
    return {"add": {"rule": {**rule, "comment": comment}}}


def _chain(name: str, hook: str, policy: str) -> dict[str, Any]:
    chain = {"family": FAMILY, "table": TABLE, "name": name, "type": "filter", "hook": hook}
    return {"add": {"chain": {**chain, "prio": PRIORITY, "policy": policy}}}


def build_document(
    *, server: ipaddress.IPv4Address, port: int, proto: str, tun: str = "tun0", uplink: str
) -> dict[str, Any]:
    """The whole kill switch, replacing an older copy of the table in the same transaction."""
    table = {"family": FAMILY, "name": TABLE}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        _chain("forward", "forward", "accept"),
        _chain("output", "output", "drop"),
        _rule(
            "forward",
            _match("iifname", "vif*"),
            _match("oifname", tun, "!="),
            {"drop": None},
            comment="AppVM traffic leaves through the tunnel only",
        ),
        _rule("output", _match("oifname", "lo"), {"accept": None}, comment="loopback"),
        _rule("output", _match("oifname", tun), {"accept": None}, comment="into the tunnel"),
        _rule("output", _match("oifname", "vif*"), {"accept": None}, comment="to the AppVMs"),
        _rule(
            "output",
            _match("oifname", uplink),
            _payload("ip", "daddr", str(server)),
            _payload(proto, "dport", port),
            {"accept": None},
            comment="the uplink carries the VPN session only",
        ),
    ]
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def remove_document() -> dict[str, Any]:
    table = {"family": FAMILY, "name": TABLE}
    return {"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]}


def as_text(document: dict[str, Any]) -> str:
    """The document as `nft -j -f -` reads it."""
    return json.dumps(document)
