"""The generated nftables JSON: golden files, docs/security.md sentence for sentence, and the
properties the design promises (our table only, priorities, no owner flag, no text rules)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from qubes_miragevpn.gateway import ruleset
from qubes_miragevpn.gateway.policy import (
    Blocked,
    Connected,
    Connecting,
    Endpoint,
    Facts,
    Policy,
    Report,
    Tunnel,
)

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden"
SECURITY_MD = ROOT / "docs" / "security.md"
ip = ipaddress.ip_address

FACTS = Facts(
    socket_mark=0x6D76,
    connected_ips=frozenset({ip("10.137.0.21"), ip("10.137.0.22"), ip("fd09:24ef:4179::a89:15")}),
)
FACTS4 = Facts(socket_mark=0x6D76, connected_ips=frozenset({ip("10.137.0.21")}))
BOOT_FACTS = Facts(socket_mark=0x6D76)
QUEUE_FACTS = Facts(socket_mark=0x6D76, connected_ips=FACTS.connected_ips, report=Report())
COUNTER_FACTS = Facts(
    socket_mark=0x6D76, connected_ips=FACTS.connected_ips, report=Report(queue=None)
)  # `qubes-miragevpn block` before QubesDB lists AppVMs
UDP = Endpoint(address=ip("198.51.100.1"), port=1194, proto="udp")
TCP6 = Endpoint(address=ip("2001:db8:100::1"), port=443, proto="tcp")


def tunnel(**changes: Any) -> Tunnel:
    values: dict[str, Any] = dict(
        device="tun0", mtu=1400, ipv6=False, dns=(ip("10.8.0.1"),), endpoint=UDP
    )
    values.update(changes)
    return Tunnel(**values)


CASES: dict[str, tuple[Policy, Facts]] = {
    "blocked-boot": (Blocked(), BOOT_FACTS),
    "blocked": (Blocked(), FACTS),
    "connecting": (Connecting(endpoints=(UDP,)), FACTS),
    "connecting-hostname-ipv6": (
        Connecting(endpoints=(UDP, TCP6), resolve_via_uplink_dns=True),
        FACTS,
    ),
    "connected": (Connected(tunnel=tunnel()), FACTS),
    "connected-ipv6-two-dns": (
        Connected(tunnel=tunnel(ipv6=True, dns=(ip("fd08::1"), ip("10.8.0.1"), ip("10.8.0.2")))),
        FACTS,
    ),
    "connected-no-dns": (Connected(tunnel=tunnel(dns=(ip("fd08::1"),))), FACTS),
    "connected-ipv6-without-connected-ips6": (Connected(tunnel=tunnel(ipv6=True)), FACTS4),
    "blocked-report-queue": (Blocked(), QUEUE_FACTS),
    "connected-report-queue": (Connected(tunnel=tunnel()), QUEUE_FACTS),
    "connecting-report-counters": (Connecting(endpoints=(UDP,)), COUNTER_FACTS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    """The document is byte-for-byte the reviewed one (UPDATE_GOLDEN=1 rewrites the files)."""
    policy, facts = CASES[case]
    text = json.dumps(ruleset.build_document(policy, facts), indent=1, sort_keys=True) + "\n"
    path = GOLDEN / f"firewall-{case}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} differs; review, then UPDATE_GOLDEN=1"


# --- docs/security.md --------------------------------------------------------------------

SECTION = re.compile(r"^## (.+)$")
STATEMENT = re.compile(r"^- \*\*([\w-]+)\*\* · (.+)$")


def documented() -> dict[str, list[tuple[str, str]]]:
    """(chain, sentence template) per section of docs/security.md."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in SECURITY_MD.read_text().splitlines():
        if m := SECTION.match(line):
            current = m.group(1)
            sections[current] = []
        elif m := STATEMENT.match(line):
            sections[current].append((m.group(1), m.group(2)))
    return sections


def sentence_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts) + r"\Z")


def allowed_statements(policy: Policy) -> list[tuple[str, str]]:
    docs = documented()
    own = {"blocked": "Blocked", "connecting": "Connecting", "connected": "Connected"}
    name = ruleset.policy_name(policy)
    result = docs["Every policy"] + docs[own[name]]
    if name == "connected":  # "the session's endpoint as in Connecting" (not its uplink DNS)
        result += [s for s in docs["Connecting"] if "DNS server" not in s[1]]
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rule_is_a_sentence_of_its_policy_in_security_md(case: str) -> None:
    policy, facts = CASES[case]
    allowed = allowed_statements(policy)
    for rule in ruleset.rules(policy, facts):
        assert any(
            chain == rule.chain and sentence_pattern(text).match(rule.comment)
            for chain, text in allowed
        ), f"{case}: rule in {rule.chain} {rule.comment!r} is not in docs/security.md"


def test_every_sentence_of_security_md_is_generated_by_a_case() -> None:
    docs = documented()
    generated = [
        (ruleset.policy_name(p), r) for p, f in CASES.values() for r in ruleset.rules(p, f)
    ]
    for section, statements in docs.items():
        for chain, text in statements:
            pattern = sentence_pattern(text)
            hits = [
                name
                for name, r in generated
                if r.chain == chain
                and pattern.match(r.comment)
                and (section == "Every policy" or name == section.lower())
            ]
            assert hits, f"security.md [{section}] {chain}: {text!r} is generated by no case"


def test_blocked_has_only_the_every_policy_sentences() -> None:
    every = documented()["Every policy"]
    for rule in ruleset.rules(Blocked(), FACTS):
        assert any(c == rule.chain and sentence_pattern(t).match(rule.comment) for c, t in every)


def test_chain_table_of_security_md_matches_the_chains() -> None:
    text = SECURITY_MD.read_text()
    for chain in ruleset.CHAINS:
        if chain.type is None:
            continue
        row = f"| `{chain.name}` | {chain.type} | {chain.hook} | {chain.prio} | {chain.policy} |"
        assert row in text, f"docs/security.md lacks the row {row}"


# --- properties of every document -----------------------------------------------------------


def commands(case: str) -> list[dict[str, Any]]:
    policy, facts = CASES[case]
    document = ruleset.build_document(policy, facts)
    return list(document["nftables"][1:])


@pytest.mark.parametrize("case", sorted(CASES))
def test_document_touches_our_table_only_and_replaces_it_atomically(case: str) -> None:
    cmds = commands(case)
    ours = {"family": "inet", "name": "qubes-miragevpn"}
    assert cmds[:3] == [
        {"add": {"table": ours}},
        {"delete": {"table": ours}},
        {"add": {"table": ours}},
    ]
    for cmd in cmds:
        ((verb, obj),) = cmd.items()
        assert verb in ("add", "delete")
        ((_kind, body),) = obj.items()
        assert body["family"] == "inet"
        assert body.get("table", body.get("name")) == "qubes-miragevpn"
        if _kind == "table":
            assert "flags" not in body, "no owner (or any) table flag: the table must outlive us"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rules_are_structured_json_not_text(case: str) -> None:
    for cmd in commands(case):
        rule = cmd.get("add", {}).get("rule")
        if rule is not None:
            assert rule["expr"] and all(isinstance(stmt, dict) for stmt in rule["expr"])
            assert len(rule["comment"].encode()) <= 128  # nftables' comment limit


def test_priorities_run_before_qubes_and_the_flow_offload() -> None:
    hooks = {(c.type, c.hook): c.prio for c in ruleset.CHAINS if c.type}
    assert hooks[("filter", "forward")] < 5  # qubes-nat-accel adds flows at filter+5
    assert hooks[("filter", "forward")] < 0 and hooks[("filter", "input")] < 0
    assert hooks[("filter", "prerouting")] < -300  # Qubes' antispoof at raw
    assert hooks[("nat", "prerouting")] < -100  # Qubes' dnat-dns at dstnat
    assert hooks[("nat", "postrouting")] < 100  # Qubes' masquerade at srcnat
    forward = next(c for c in ruleset.CHAINS if c.name == "forward")
    output = next(c for c in ruleset.CHAINS if c.name == "output")
    assert forward.policy == "drop" and output.policy == "drop"


def test_connected_never_snats_and_forwards_only_to_the_tunnel() -> None:
    policy, facts = CASES["connected"]
    for rule in ruleset.rules(policy, facts):
        assert "snat" not in rule.verdict
        if rule.chain == "forward" and rule.verdict == "accept":
            text = json.dumps(rule.expr)
            assert '"tun0"' in text, rule
    (nat,) = [r for r in ruleset.rules(policy, facts) if r.chain == "tunnel-nat"]
    assert nat.verdict == "masquerade"


def test_mss_is_clamped_to_mtu_minus_headers() -> None:
    rules = ruleset.rules(*CASES["connected-ipv6-two-dns"])
    values = sorted(
        stmt["mangle"]["value"] for r in rules for stmt in r.expr if "mangle" in stmt and
        "tcp option" in stmt["mangle"]["key"]
    )  # fmt: skip
    assert values == [1340, 1340, 1360, 1360]


def test_dns_redirect_uses_ipv4_servers_round_robin() -> None:
    rules = ruleset.rules(*CASES["connected-ipv6-two-dns"])
    targets = [stmt["dnat"]["addr"] for r in rules for stmt in r.expr if "dnat" in stmt]
    assert targets == ["10.8.0.1", "10.8.0.2"]
    one = ruleset.rules(*CASES["connected"])
    assert [stmt["dnat"]["addr"] for r in one for stmt in r.expr if "dnat" in stmt] == [
        "10.8.0.1",
        "10.8.0.1",
    ]
    assert not [r for r in ruleset.rules(*CASES["connected-no-dns"]) if r.chain == "dns-redirect"]


def test_uplink_is_closed_to_unmarked_packets_in_every_policy() -> None:
    for case, (policy, facts) in CASES.items():
        output = [r for r in ruleset.rules(policy, facts) if r.chain == "output"]
        for rule in output:
            text = json.dumps(rule.expr)
            if '"eth0"' in text and rule.verdict != "goto" and "icmpv6" not in text:
                assert '"mark"' in text, (case, rule.comment)
        assert output[-1].verdict == "goto" and '"eth0"' in json.dumps(output[-1].expr)


def test_remove_document_is_idempotent_add_then_delete() -> None:
    ours = {"family": "inet", "name": "qubes-miragevpn"}
    assert ruleset.remove_document()["nftables"][1:] == [
        {"add": {"table": ours}},
        {"delete": {"table": ours}},
    ]


def test_antispoofing_per_family_follows_the_known_addresses() -> None:
    def antispoof(facts: Facts) -> list[str]:
        return [r.comment[:4] for r in ruleset.rules(Blocked(), facts) if r.chain == "prerouting"]

    assert antispoof(BOOT_FACTS) == []
    assert antispoof(FACTS4) == ["IPv4", "IPv4"]
    assert antispoof(FACTS) == ["IPv4", "IPv6", "IPv4", "IPv6"]


# --- the blocked-traffic report ---------------------------------------------------------------


def forward(case: str) -> list[ruleset.Rule]:
    return [r for r in ruleset.rules(*CASES[case]) if r.chain == "forward"]


@pytest.mark.parametrize("case", ["blocked-report-queue", "connected-report-queue"])
def test_the_queue_sits_just_before_the_refusal_and_after_every_accept(case: str) -> None:
    rules = forward(case)
    queues = [i for i, r in enumerate(rules) if r.verdict == "queue"]
    assert queues == [len(rules) - 3, len(rules) - 2]  # IPv4, IPv6, then "every other ... refused"
    assert rules[-1].verdict == "goto"
    assert all(r.verdict != "accept" for r in rules[queues[0] :])
    for index in queues:
        statements = rules[index].expr
        (queue,) = [s["queue"] for s in statements if "queue" in s]
        assert queue == {"num": 0x6D76}, "no flags: never `bypass`, never `fanout`"
        kinds = [next(iter(s)) for s in statements]
        # rate-limited, and only once per flow key, before the queue
        assert kinds[-3:] == ["limit", "set", "queue"]
        assert statements[-3]["limit"] == {"rate": 20, "per": "second", "burst": 40}
        assert statements[-2]["set"]["op"] == "add"


def test_counters_mode_has_no_queue_and_no_verdict_of_its_own() -> None:
    rules = forward("connecting-report-counters")
    counted = [r for r in rules if "counted" in r.comment]
    assert len(counted) == 2 and all(r.verdict == "set" for r in counted)
    assert not [r for r in rules if r.verdict == "queue"]
    sets = {s.name: s for s in ruleset.sets(COUNTER_FACTS)}
    assert sets[ruleset.SET_BLOCKED4].counter and sets[ruleset.SET_BLOCKED6].timeout == 3600


def test_without_a_report_nothing_reaches_userspace() -> None:
    for case in ("blocked", "connected", "connecting"):
        assert not [r for r in forward(case) if r.verdict in ("queue", "set")]
        assert not [s for s in ruleset.sets(CASES[case][1]) if s.timeout is not None]
