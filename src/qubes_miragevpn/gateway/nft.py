"""Apply a policy to the kernel: one libnftables transaction, read back, verified; else Blocked.

    backend = open_backend()                 # libnftables' Python binding, or `nft -j -f -`
    installed = apply_policy(Connecting(endpoints=...), facts, backend=backend)  # or raises
    verify_policy(Blocked(), facts, backend=backend)                  # raises FirewallError
    verify_unchanged(installed, backend=backend)   # installed = what apply_policy returned
    remove_all(backend=backend)              # what `qubes-miragevpn unblock` runs
    kernel_has_queue(backend=backend)        # nftables' queue expression (blocked-traffic report)

Two backends behind one Protocol (`NftBackend`): `LibNftables` uses the `nftables` module
(Debian's python3-nftables, or PyPI's pip-nftables on a newer stack), which needs
libnftables.so.1; `NftCommand` pipes the same JSON into `nft -j -f -`. A libnftables context
talks to the network namespace of the thread that creates it, so `LibNftables` makes a fresh one
for each call.

When applying or verifying a policy fails, Blocked is applied (and verified) in its place, and
`FirewallError.blocked` says whether that worked: the daemon stays blocked and says why.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qubes_miragevpn.gateway import ruleset
from qubes_miragevpn.gateway.policy import Blocked, Facts, Policy

log = logging.getLogger(__name__)

NFT_TIMEOUT = 15.0  # seconds for one `nft` command (the fallback backend)


class FirewallError(RuntimeError):
    """The firewall could not be put in the asked state. `blocked`: Blocked is in force."""

    def __init__(self, message: str, *, blocked: bool = False) -> None:
        super().__init__(message)
        self.blocked = blocked


class NftBackend(Protocol):
    """Runs one libnftables JSON document; returns the parsed JSON output (or None)."""

    name: str

    def run(self, document: Any) -> Any: ...


class LibNftables:
    """libnftables through its Python binding (`import nftables`)."""

    name = "libnftables"

    def __init__(self, module: Any) -> None:
        self._module = module

    def run(self, document: Any) -> Any:
        nft = self._module.Nftables()  # per call: the context binds to this thread's netns
        nft.set_json_output(True)
        nft.set_handle_output(False)
        rc, output, error = nft.json_cmd(document)
        if rc != 0:
            raise FirewallError(f"libnftables refused the ruleset (rc {rc}): {error.strip()}")
        return output or None


class NftCommand:
    """The `nft` program, fed JSON on standard input (`nft -j -f -`)."""

    name = "nft -j"

    def __init__(self, argv: Sequence[str] = ("nft",)) -> None:
        self._argv = tuple(argv)

    def run(self, document: Any) -> Any:
        try:
            done = subprocess.run(
                [*self._argv, "-j", "-f", "-"],
                input=json.dumps(document),
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FirewallError(f"could not run {self._argv[-1]}: {e}") from e
        if done.returncode != 0:
            raise FirewallError(
                f"{self._argv[-1]} refused the ruleset (exit {done.returncode}):"
                f" {done.stderr.strip()}"
            )
        return json.loads(done.stdout) if done.stdout.strip() else None


def open_backend() -> NftBackend:
    """The Python binding when it imports and finds libnftables.so.1, else `nft -j -f -`."""
    try:
        import nftables

        nftables.Nftables().get_json_output()  # loads libnftables.so.1 now, not mid-apply
        return LibNftables(nftables)
    except (ImportError, OSError) as e:
        nft = shutil.which("nft") or "/usr/sbin/nft"
        log.info("libnftables' Python binding unusable (%s); using %s -j", e, nft)
        return NftCommand((nft,))


@dataclass(frozen=True, slots=True)
class Installed:
    """What the read-back found in our table, reduced to what we compare.

    `statements` holds every rule's statements as the kernel lists them (counters zeroed). It
    is not compared with `expected()` (libnftables lists rules in its own normal form: added
    protocol dependencies, `meta l4proto udp th dport` shown as `udp dport`), but two
    read-backs of one installed table are equal in it: see `verify_unchanged`."""

    chains: tuple[tuple[str, str | None, str | None, int | None, str | None], ...]
    sets: tuple[tuple[str, str, tuple[str, ...]], ...]
    rules: tuple[tuple[str, str, str], ...]  # (chain, comment, last statement)
    flags: tuple[str, ...]
    statements: tuple[str, ...] = field(default=(), compare=False)


def read_back(backend: NftBackend | None = None) -> Installed | None:
    """Our table as the kernel has it, or None when it does not exist."""
    backend = backend or open_backend()
    try:
        output = backend.run(ruleset.list_document())
    except FirewallError as e:
        if "No such file or directory" in str(e):
            return None
        raise
    return _reduce(output)


def _reduce(output: Any) -> Installed | None:
    objects = output.get("nftables", []) if isinstance(output, dict) else []
    chains, sets, rules, statements, found = [], [], [], [], False
    flags: tuple[str, ...] = ()
    for obj in objects:
        if "table" in obj:
            found = True
            raw = obj["table"].get("flags", ())
            flags = (raw,) if isinstance(raw, str) else tuple(raw)
        elif "chain" in obj:
            c = obj["chain"]
            chains.append((c["name"], c.get("type"), c.get("hook"), c.get("prio"), c.get("policy")))
        elif "set" in obj:
            s = obj["set"]
            kind = " . ".join(s["type"]) if isinstance(s["type"], list) else s["type"]
            # a dynamic set's elements are what the rules put there (the blocked-traffic
            # report), not part of the policy: only its declaration is compared
            dynamic = "timeout" in s.get("flags", ())
            elements = () if dynamic else tuple(sorted(map(_element, s.get("elem", ()))))
            sets.append((s["name"], kind, elements))
        elif "rule" in obj:
            r = obj["rule"]
            last = str(next(iter(r["expr"][-1]))) if r.get("expr") else ""
            rules.append((r["chain"], r.get("comment", ""), last))
            statements.append(_canonical(r.get("expr", [])))
    if not found:
        return None
    return Installed(tuple(chains), tuple(sorted(sets)), tuple(rules), flags, tuple(statements))


def _canonical(expr: Any) -> str:
    """A rule's statements as stable text, counters zeroed (they count, they do not decide)."""

    def zero(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (None if k == "counter" else zero(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [zero(v) for v in node]
        return node

    return json.dumps(zero(expr), sort_keys=True)


def _element(element: Any) -> str:
    return element if isinstance(element, str) else json.dumps(element, sort_keys=True)


def expected(policy: Policy, facts: Facts) -> Installed:
    """What `read_back` must find after applying (policy, facts)."""
    chains = tuple((c.name, c.type, c.hook, c.prio, c.policy) for c in ruleset.CHAINS)
    sets = tuple(sorted((s.name, s.type, tuple(sorted(s.elements))) for s in ruleset.sets(facts)))
    rules = tuple((r.chain, r.comment, r.verdict) for r in ruleset.rules(policy, facts))
    return Installed(chains, sets, rules, ())


def _differences(want: Installed, have: Installed | None) -> list[str]:
    if have is None:
        return [f"table {ruleset.FAMILY} {ruleset.TABLE} is missing"]
    problems = []
    if have.flags:
        problems.append(f"table has flags {list(have.flags)}; expected none")
    if sorted(have.chains, key=str) != sorted(want.chains, key=str):
        problems.append(f"chains differ: have {have.chains}, want {want.chains}")
    if have.sets != want.sets:
        problems.append(f"sets differ: have {have.sets}, want {want.sets}")
    for chain in {c[0] for c in want.chains}:
        mine = [r for r in have.rules if r[0] == chain]
        theirs = [r for r in want.rules if r[0] == chain]
        if mine != theirs:
            problems.append(f"rules of chain {chain} differ: have {mine}, want {theirs}")
    return problems


def verify_policy(policy: Policy, facts: Facts, *, backend: NftBackend | None = None) -> None:
    """Read our table back; raise FirewallError unless it is exactly (policy, facts)."""
    _verified(policy, facts, backend or open_backend())


def verify_unchanged(installed: Installed, *, backend: NftBackend | None = None) -> None:
    """Raise FirewallError unless our table is still exactly what `apply_policy` returned,
    statement for statement (for periodic checks: someone may have edited or deleted it)."""
    backend = backend or open_backend()
    now = read_back(backend)
    if now is None:
        raise FirewallError(f"table {ruleset.FAMILY} {ruleset.TABLE} has disappeared")
    if now != installed or now.statements != installed.statements:
        changed = [
            f"{rule[0]}: {rule[1]!r}"
            for rule, was, is_ in zip(
                installed.rules, installed.statements, now.statements, strict=False
            )
            if was != is_
        ]
        raise FirewallError(
            "our firewall table was changed behind our back"
            + (f" (rules: {'; '.join(changed)})" if changed else "")
        )


def _apply_verified(policy: Policy, facts: Facts, backend: NftBackend) -> Installed:
    name = ruleset.policy_name(policy)
    log.info(
        "firewall: replacing table %s %s with the %s policy (via %s)",
        ruleset.FAMILY,
        ruleset.TABLE,
        name,
        backend.name,
    )
    backend.run(ruleset.build_document(policy, facts))
    return _verified(policy, facts, backend)


def _verified(policy: Policy, facts: Facts, backend: NftBackend) -> Installed:
    installed = read_back(backend)
    problems = _differences(expected(policy, facts), installed)
    if problems or installed is None:
        raise FirewallError(
            f"the {ruleset.policy_name(policy)} firewall is not in place: " + "; ".join(problems)
        )
    return installed


def apply_policy(policy: Policy, facts: Facts, *, backend: NftBackend | None = None) -> Installed:
    """Install (policy, facts) atomically and verify it; on failure install Blocked and raise.

    Returns the verified read-back (keep it for `verify_unchanged`). The FirewallError says
    what failed; its `blocked` tells whether Blocked is now in force."""
    backend = backend or open_backend()
    try:
        return _apply_verified(policy, facts, backend)
    except FirewallError as e:
        failure = e
    if isinstance(policy, Blocked):
        raise FirewallError(f"could not install the blocked firewall: {failure}", blocked=False)
    try:
        _apply_verified(Blocked(), facts, backend)
    except FirewallError as e:
        raise FirewallError(
            f"{failure}; and falling back to the blocked firewall failed too: {e}", blocked=False
        ) from e
    raise FirewallError(f"{failure}; the blocked firewall is in force instead", blocked=True)


def remove_all(*, backend: NftBackend | None = None) -> None:
    """Remove our table (the `unblock` command): AppVM traffic is then Qubes' business again."""
    backend = backend or open_backend()
    log.info("firewall: deleting table %s %s (unblock)", ruleset.FAMILY, ruleset.TABLE)
    backend.run(ruleset.remove_document())
    if read_back(backend) is not None:
        raise FirewallError(f"table {ruleset.FAMILY} {ruleset.TABLE} is still there after delete")


def list_set_document(name: str) -> Any:
    """The document asking for one set of our table, elements and counters included."""
    return {
        "nftables": [
            {"list": {"set": {"family": ruleset.FAMILY, "table": ruleset.TABLE, "name": name}}}
        ]
    }


def queue_probe_document() -> Any:
    """A transaction that adds a throw-away table with a `queue` rule and deletes it again:
    the kernel accepts it only if it has nftables' queue expression (CONFIG_NFT_QUEUE).
    Nothing of it remains either way; our own table is not touched."""
    probe = {"family": ruleset.FAMILY, "name": ruleset.TABLE + "-probe"}
    chain = {"family": ruleset.FAMILY, "table": probe["name"], "name": "probe"}
    rule = {**chain, "chain": "probe", "expr": [{"queue": {"num": 0}}]}
    del rule["name"]
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": {"table": probe}},
            {"add": {"chain": chain}},
            {"add": {"rule": rule}},
            {"delete": {"table": probe}},
        ]
    }


def kernel_has_queue(*, backend: NftBackend | None = None) -> bool:
    """Whether the kernel has nftables' `queue` expression: a throw-away table with a queue
    rule, added and deleted in one transaction (nothing remains; our table is untouched)."""
    backend = backend or open_backend()
    try:
        backend.run(queue_probe_document())
    except FirewallError as e:
        log.debug("no nftables queue expression: %s", e)
        return False
    return True
