"""Applying, verifying and removing our table with real nftables in a namespace, through both
backends (libnftables' Python binding and `nft -j -f -`)."""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qubes_miragevpn.gateway import nft, ruleset
from qubes_miragevpn.gateway.nft import (
    FirewallError,
    LibNftables,
    NftBackend,
    NftCommand,
    apply_policy,
    expected,
    read_back,
    remove_all,
    verify_policy,
    verify_unchanged,
)
from qubes_miragevpn.gateway.policy import (
    Blocked,
    Connected,
    Connecting,
    Endpoint,
    Facts,
    Report,
    Tunnel,
)
from tests.helpers.netns import Netns

pytestmark = pytest.mark.netns
ip = ipaddress.ip_address
SRC = Path(__file__).resolve().parents[3] / "src"

FACTS = Facts(socket_mark=0x6D76, connected_ips=frozenset({ip("10.137.0.21")}))
UDP = Endpoint(address=ip("198.51.100.1"), port=1194, proto="udp")
TUNNEL = Tunnel(device="tun0", mtu=1400, ipv6=True, dns=(ip("10.8.0.1"),), endpoint=UDP)
POLICIES = [
    Blocked(),
    Connecting(endpoints=(UDP,), resolve_via_uplink_dns=True),
    Connected(tunnel=TUNNEL),
]


class InNamespace:
    """Runs backend calls inside `ns`: the binding from a thread that entered the namespace,
    the command through `ip netns exec`."""

    def __init__(self, ns: Netns, kind: str) -> None:
        self.ns, self.kind = ns, kind
        if kind == "libnftables":
            import nftables

            self.backend: NftBackend = LibNftables(nftables)
        else:
            self.backend = NftCommand(ns.argv(["nft"]))
        self.name = self.backend.name

    def run(self, document: Any) -> Any:
        if self.kind == "libnftables":
            return self.ns.call(lambda: self.backend.run(document))
        return self.backend.run(document)


def binding_available() -> bool:
    try:
        import nftables

        nftables.Nftables()
    except (ImportError, OSError):
        return False
    return True


BACKENDS = [
    pytest.param(
        "libnftables",
        marks=pytest.mark.skipif(not binding_available(), reason="no nftables Python binding"),
    ),
    "nft -j",
]


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("policy", POLICIES, ids=ruleset.policy_name)
def test_apply_verify_and_read_back(netns: Netns, kind: str, policy: Any) -> None:
    backend = InNamespace(netns, kind)
    assert read_back(backend) is None
    apply_policy(policy, FACTS, backend=backend)
    verify_policy(policy, FACTS, backend=backend)
    assert read_back(backend) == expected(policy, FACTS)
    listing = netns.run(["nft", "list", "table", "inet", "qubes-miragevpn"]).stdout
    assert "flags" not in listing.split("\n")[0]  # no owner flag
    remove_all(backend=backend)
    remove_all(backend=backend)  # idempotent
    assert read_back(backend) is None


def test_verify_notices_a_missing_rule_and_a_missing_table(netns: Netns) -> None:
    backend = InNamespace(netns, "nft -j")
    apply_policy(Connected(tunnel=TUNNEL), FACTS, backend=backend)
    listing = netns.run(["nft", "-a", "list", "chain", "inet", "qubes-miragevpn", "forward"])
    handle = next(
        line.rsplit("# handle ", 1)[1]
        for line in listing.stdout.splitlines()
        if "leaving by the tunnel device" in line
    )
    netns.run(["nft", "delete", "rule", "inet", "qubes-miragevpn", "forward", "handle", handle])
    with pytest.raises(FirewallError, match="rules of chain forward differ"):
        verify_policy(Connected(tunnel=TUNNEL), FACTS, backend=backend)
    with pytest.raises(FirewallError, match=r"chains differ|rules of chain"):
        verify_policy(Blocked(), FACTS, backend=backend)
    remove_all(backend=backend)
    with pytest.raises(FirewallError, match="is missing"):
        verify_policy(Blocked(), FACTS, backend=backend)


class Corrupting:
    """A real backend that breaks every document but Blocked's (an unknown meta key)."""

    name = "corrupting"

    def __init__(self, inner: InNamespace) -> None:
        self.inner = inner
        self.blocked = ruleset.build_document(Blocked(), FACTS)

    def run(self, document: Any) -> Any:
        if document != self.blocked and any(
            "rule" in c.get("add", {}) for c in document["nftables"]
        ):
            document = copy.deepcopy(document)
            rule = next(
                c["add"]["rule"] for c in document["nftables"] if "rule" in c.get("add", {})
            )
            rule["expr"].insert(
                0, {"match": {"op": "==", "left": {"meta": {"key": "nope"}}, "right": 1}}
            )
        return self.inner.run(document)


def test_a_failed_apply_leaves_blocked_in_force(netns: Netns) -> None:
    backend = Corrupting(InNamespace(netns, "nft -j"))
    apply_policy(Connected(tunnel=TUNNEL), FACTS, backend=InNamespace(netns, "nft -j"))
    with pytest.raises(FirewallError) as caught:
        apply_policy(Connecting(endpoints=(UDP,)), FACTS, backend=backend)
    assert caught.value.blocked
    assert "blocked firewall is in force" in str(caught.value)
    verify_policy(Blocked(), FACTS, backend=InNamespace(netns, "nft -j"))


def test_when_even_blocked_fails_the_error_says_so(netns: Netns) -> None:
    class Refusing:
        name = "refusing"

        def run(self, document: Any) -> Any:
            raise FirewallError("nft refused the ruleset (test)")

    with pytest.raises(FirewallError) as caught:
        apply_policy(Connecting(endpoints=(UDP,)), FACTS, backend=Refusing())
    assert not caught.value.blocked and "falling back" in str(caught.value)
    with pytest.raises(FirewallError) as caught:
        apply_policy(Blocked(), FACTS, backend=Refusing())
    assert not caught.value.blocked and "could not install the blocked" in str(caught.value)


def test_the_table_outlives_the_process_that_installed_it(netns: Netns) -> None:
    """What the daemon's death (crash, SIGKILL, stop) looks like to the kernel: no owner."""
    script = (
        "import ipaddress\n"
        "from qubes_miragevpn.gateway.nft import apply_policy\n"
        "from qubes_miragevpn.gateway.policy import Blocked, Facts\n"
        "apply_policy(Blocked(), Facts(socket_mark=0x6D76,"
        " connected_ips=frozenset({ipaddress.ip_address('10.137.0.21')})))\n"
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        netns.argv([sys.executable, "-c", script]), env=env, timeout=60, capture_output=True
    )
    assert done.returncode == -9, done.stderr
    verify_policy(Blocked(), FACTS, backend=InNamespace(netns, "nft -j"))


QUBES_TABLES = """
table ip qubes {
   chain forward { type filter hook forward priority filter; policy accept; oifgroup 2 drop; }
   chain dnat-dns { type nat hook prerouting priority dstnat; policy accept;
      ip daddr 10.139.1.1 udp dport 53 dnat to 10.139.1.1; }
}
table inet qubes-nat-accel {
   chain qubes-accel { type filter hook forward priority filter + 5; policy accept; counter; }
}
"""


def test_qubes_tables_are_never_touched(netns: Netns) -> None:
    netns.run(["nft", "-f", "-"], input=QUBES_TABLES)

    def theirs() -> str:
        out = netns.run(["nft", "list", "ruleset"]).stdout
        return out.split("table inet qubes-miragevpn")[0]

    before = theirs()
    backend = InNamespace(netns, "nft -j")
    for policy in [*POLICIES, Blocked()]:
        apply_policy(policy, FACTS, backend=backend)
        assert theirs() == before
    remove_all(backend=backend)
    assert theirs() == before


def test_open_backend_prefers_the_binding_and_falls_back_to_nft(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if binding_available():
        assert isinstance(nft.open_backend(), LibNftables)
    monkeypatch.setitem(sys.modules, "nftables", None)  # import now raises ImportError
    backend = nft.open_backend()
    assert isinstance(backend, NftCommand)


@pytest.mark.parametrize("kind", BACKENDS)
def test_verify_unchanged_notices_an_edited_rule_that_kept_its_comment(
    netns: Netns, kind: str
) -> None:
    backend = InNamespace(netns, kind)
    policy = Connecting(endpoints=(UDP,))
    installed = apply_policy(policy, FACTS, backend=backend)
    verify_unchanged(installed, backend=backend)  # a second read-back is identical
    netns.run(["ping", "-c", "1", "-W", "1", "127.0.0.1"], check=False)  # counters move
    verify_unchanged(installed, backend=backend)
    listing = netns.run(["nft", "-a", "list", "chain", "inet", "qubes-miragevpn", "output"])
    line = next(x for x in listing.stdout.splitlines() if "server endpoint" in x)
    comment = line.split('comment "', 1)[1].split('"', 1)[0]
    handle = line.rsplit("# handle ", 1)[1]
    netns.run(["nft", "replace", "rule", "inet", "qubes-miragevpn", "output", "handle", handle,
               "oifname", "eth0", "accept", "comment", f'"{comment}"'])  # fmt: skip
    verify_policy(policy, FACTS, backend=backend)  # comments and verdicts alike: not seen here
    with pytest.raises(FirewallError, match=r"changed behind our back.*server endpoint"):
        verify_unchanged(installed, backend=backend)
    remove_all(backend=backend)
    with pytest.raises(FirewallError, match="disappeared"):
        verify_unchanged(installed, backend=backend)


REPORTS = [Report(queue=None), Report()]


@pytest.mark.parametrize("report", REPORTS, ids=["counters", "queue"])
def test_report_rulesets_load_and_their_sets_may_fill(netns: Netns, report: Report) -> None:
    """The blocked-traffic report's rules and dynamic sets are valid nftables for real; the
    elements that traffic adds to the sets are not a change of the policy. A kernel without
    nftables' queue expression refuses the queue rule (and only it): the daemon then counts."""
    backend = InNamespace(netns, "nft -j")
    facts = replace(FACTS, report=report)
    if report.queue is not None and not nft.kernel_has_queue(backend=backend):
        apply_policy(Blocked(), FACTS, backend=backend)
        with pytest.raises(FirewallError) as raised:
            apply_policy(Connected(tunnel=TUNNEL), facts, backend=backend)
        assert not raised.value.blocked  # Blocked with the queue fails the same way ...
        verify_policy(Blocked(), FACTS, backend=backend)  # ... and the old table stays
        document = ruleset.build_document(Blocked(), facts)
        for command in document["nftables"]:
            rule = command.get("add", {}).get("rule")
            if rule and "queue" in rule["expr"][-1]:
                rule["expr"][-1] = {"drop": None}  # the rest of the rule is valid
        backend.run(document)
        pytest.skip("this kernel has no nftables queue expression (CONFIG_NFT_QUEUE)")
    for policy in POLICIES:
        installed = apply_policy(policy, facts, backend=backend)
        netns.run(["nft", "add", "element", "inet", "qubes-miragevpn", "blocked-ipv4",
                   "{ 10.137.0.21 . tcp . 203.0.113.7 . 443 }"])  # fmt: skip
        listed = netns.run(["nft", "list", "set", "inet", "qubes-miragevpn", "blocked-ipv4"])
        assert "203.0.113.7 . 443" in listed.stdout
        verify_unchanged(installed, backend=backend)
        verify_policy(policy, facts, backend=backend)
