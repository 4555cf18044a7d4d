"""Network facts: parsing, the YAML file source, the QubesDB source (double and real daemon)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from qubes_miragevpn.gateway.facts import (
    CONNECTED_IPS,
    LOG_LEVEL,
    NAMES,
    PROFILE,
    Downstream,
    FactsChanged,
    FactsError,
    FactsInvalid,
    FactsSourceLost,
    FactsUnavailable,
    FactsUpdate,
    FileFacts,
    NetworkFacts,
    QubesDBFacts,
    Uplink,
    parse_facts,
    parse_facts_file,
)
from qubes_miragevpn.gateway.qubesdb import QubesDBAdapter
from tests.helpers.fake_qubesdb import FakeQubesDB
from tests.helpers.real_qubesdb import RealQubesDB

# What dom0 writes for a sys-vpn with IPv6 and two running AppVMs (Qubes 4.2 addressing).
QUBES = {
    "/qubes-ip": "10.137.0.7",
    "/qubes-gateway": "10.137.0.6",
    "/qubes-primary-dns": "10.139.1.1",
    "/qubes-secondary-dns": "10.139.1.2",
    "/qubes-ip6": "fd09:24ef:4179::a89:7",
    "/qubes-gateway6": "fd09:24ef:4179::a89:6",
    "/qubes-netvm-network": "10.137.0.7",
    "/qubes-netvm-gateway": "10.137.0.7",
    "/qubes-netvm-netmask": "255.255.255.255",
    "/qubes-netvm-primary-dns": "10.139.1.1",
    "/qubes-netvm-secondary-dns": "10.139.1.2",
    "/qubes-netvm-gateway6": "fd09:24ef:4179::a89:7",
    "/connected-ips": "10.137.0.10 10.137.0.11",
    "/connected-ips6": "fd09:24ef:4179::a89:a",
    "/qubes-service/qubes-miragevpn": "1",
    "/vm-config/miragevpn-profile": "work.ovpn",
    "/vm-config/miragevpn-log-level": "debug",
}
EXPECTED = NetworkFacts(
    uplink=Uplink(
        address=IPv4Address("10.137.0.7"),
        gateway=IPv4Address("10.137.0.6"),
        dns=(IPv4Address("10.139.1.1"), IPv4Address("10.139.1.2")),
        address6=IPv6Address("fd09:24ef:4179::a89:7"),
        gateway6=IPv6Address("fd09:24ef:4179::a89:6"),
    ),
    downstream=Downstream(
        network=IPv4Network("10.137.0.7/32"),
        gateway=IPv4Address("10.137.0.7"),
        virtual_dns=(IPv4Address("10.139.1.1"), IPv4Address("10.139.1.2")),
        gateway6=IPv6Address("fd09:24ef:4179::a89:7"),
        connected=frozenset({IPv4Address("10.137.0.10"), IPv4Address("10.137.0.11")}),
        connected6=frozenset({IPv6Address("fd09:24ef:4179::a89:a")}),
    ),
    service_enabled=True,
    profile="work.ovpn",
    log_level="debug",
)
FAST = (0.02, 0.05)


def test_parse_what_dom0_writes() -> None:
    facts = parse_facts(QUBES)
    assert facts == EXPECTED
    assert facts.missing == ()


def test_absent_keys_are_none_and_required_ones_are_named() -> None:
    facts = parse_facts({"/qubes-gateway": "10.137.0.6", "/connected-ips": ""})
    assert facts.uplink.address is None and facts.uplink.dns == ()
    assert facts.downstream == Downstream()
    assert facts.service_enabled is None and facts.profile is None and facts.log_level is None
    assert facts.missing == ("/qubes-ip", "/qubes-netvm-gateway")
    assert parse_facts({}).missing == ("/qubes-ip", "/qubes-gateway", "/qubes-netvm-gateway")


def test_empty_values_mean_not_set() -> None:
    facts = parse_facts({"/qubes-ip6": "", PROFILE: "", LOG_LEVEL: ""})
    assert facts.uplink.address6 is None and facts.profile is None and facts.log_level is None


def test_every_bad_value_is_reported_with_where_it_came_from() -> None:
    values = dict(QUBES)
    values.update(
        {
            "/qubes-ip": "10.137.0.300",
            "/qubes-gateway6": "10.0.0.1",  # IPv4 where IPv6 belongs
            "/qubes-primary-dns": "224.0.0.1",
            "/connected-ips": "10.137.0.10 bogus 10.137.0.11 fe80::1",
            "/qubes-service/qubes-miragevpn": "yes",
            "/vm-config/miragevpn-profile": "../etc/passwd",
            "/vm-config/miragevpn-log-level": "loud",
            "/qubes-netvm-netmask": "255.0.255.0",
        }
    )
    with pytest.raises(FactsError) as info:
        parse_facts(values, where=lambda path: f"test {path}")
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {
        "/qubes-ip",
        "/qubes-gateway6",
        "/qubes-primary-dns",
        "/connected-ips",
        "/qubes-service/qubes-miragevpn",
        "/vm-config/miragevpn-profile",
        "/vm-config/miragevpn-log-level",
        "/qubes-netvm-netmask",
    }
    assert "bogus, fe80::1" in problems["/connected-ips"].message
    assert str(problems["/qubes-ip"]) == (
        "test /qubes-ip: /qubes-ip = '10.137.0.300': not an IPv4 address"
    )
    assert "'1' (enabled) or '0'" in problems["/qubes-service/qubes-miragevpn"].message


def test_service_flag_knobs_and_netmask() -> None:
    facts = parse_facts(
        {
            "/qubes-service/qubes-miragevpn": "0",
            "/qubes-netvm-network": "10.137.0.0",
            "/qubes-netvm-netmask": "255.255.255.0",
            LOG_LEVEL: " Warning ",
            "/vm-config/miragevpn-profle": "typo.ovpn",
            "/vm-config/other-feature": "ignored",
        }
    )
    assert facts.service_enabled is False
    assert facts.downstream.network == IPv4Network("10.137.0.0/24")
    assert facts.log_level == "warning"
    assert facts.unknown_knobs == ("/vm-config/miragevpn-profle",)


def test_appvm_names_from_dom0() -> None:
    """Qubes tells a netvm its AppVMs' addresses only; vm-config.miragevpn-names names them."""
    facts = parse_facts({NAMES: "fd09::a89:c=work-vm  10.137.0.13=personal 10.137.0.12=work-vm"})
    assert facts.appvm_names == (
        (IPv4Address("10.137.0.12"), "work-vm"),
        (IPv4Address("10.137.0.13"), "personal"),
        (IPv6Address("fd09::a89:c"), "work-vm"),
    )
    assert facts.unknown_knobs == ()
    assert parse_facts({}).appvm_names == ()
    with pytest.raises(FactsError) as raised:
        parse_facts({NAMES: "10.137.0.12=work-vm 10.137.0.300=x 10.137.0.14=-bad 10.137.0.15"})
    (problem,) = raised.value.problems
    assert problem.path == NAMES
    assert "10.137.0.300=x, 10.137.0.14=-bad, 10.137.0.15" in problem.message


# ------------------------------------------------------------------ the YAML file


def test_facts_file_values_and_lines() -> None:
    text = '/qubes-ip: 10.137.0.7\n# comment\n"/qubes-service/qubes-miragevpn": 1\n/qubes-ip6: ""\n'
    values, lines = parse_facts_file(text, name="facts.yaml")
    assert values == {
        "/qubes-ip": "10.137.0.7",
        "/qubes-service/qubes-miragevpn": "1",
        "/qubes-ip6": "",
    }
    assert lines == {"/qubes-ip": 1, "/qubes-service/qubes-miragevpn": 3, "/qubes-ip6": 4}
    assert parse_facts_file("", name="f") == ({}, {})


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("/qubes-ip: 1\n/qubes-ip: 2\n", 2, "given twice (first on line 1)"),
        ("/qubes-ip: 1\n/qubes-firewall/x: 2\n", 2, "not a key the gateway reads"),
        ("/qubes-ip:\n", 1, "leave the key out"),
        ("\n/qubes-ip: [1, 2]\n", 2, "give a string"),
        ("qubes-ip: 1\n", 1, "does not start with '/'"),
        ("- /qubes-ip\n", 1, "expected a mapping"),
        ("/qubes-ip: 1\n  bad: [\n", 2, "not valid YAML"),
    ],
)
def test_facts_file_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(FactsError) as info:
        parse_facts_file(text, name="facts.yaml")
    problem = info.value.problems[0]
    assert problem.where == f"facts.yaml:{line}", problem
    assert message in problem.message


def test_file_source_reads_and_blames_the_line(tmp_path: Path) -> None:
    path = tmp_path / "facts.yaml"
    path.write_text("/qubes-ip: 10.137.0.7\n/qubes-gateway: nope\n")
    with pytest.raises(FactsError) as info:
        FileFacts(path).read()
    assert str(info.value) == f"{path}:2: /qubes-gateway = 'nope': not an IPv4 address"
    with pytest.raises(FactsUnavailable, match="cannot read"):
        FileFacts(tmp_path / "absent.yaml").read()


def write_yaml(path: Path, values: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f'"{k}": "{v}"\n' for k, v in values.items()))
    os.replace(tmp, path)  # a new inode: the poll sees it whatever the clock granularity


class Updates:
    """Iterates a source's `changes()` in a task, so tests can wait with timeouts."""

    def __init__(self, changes: AsyncIterator[FactsUpdate]) -> None:
        self.queue: asyncio.Queue[FactsUpdate] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(changes))

    async def _run(self, changes: AsyncIterator[FactsUpdate]) -> None:
        async for update in changes:
            await self.queue.put(update)

    async def next(self, timeout: float = 5.0) -> FactsUpdate:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def quiet(self, timeout: float = 0.3) -> bool:
        await asyncio.sleep(timeout)
        assert self.queue.empty(), f"unexpected update {self.queue.get_nowait()}"
        return True

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def test_file_source_starts_with_the_current_facts_unless_read(tmp_path: Path) -> None:
    path = tmp_path / "facts.yaml"
    write_yaml(path, QUBES)

    async def body() -> None:
        updates = Updates(FileFacts(path, poll_seconds=0.02).changes())
        try:
            first = await updates.next()
            assert isinstance(first, FactsChanged) and first.facts == EXPECTED
            assert first.changed == set(QUBES)
            assert await updates.quiet(0.1)
        finally:
            await updates.stop()

    asyncio.run(body())


def test_file_source_reports_real_changes_only(tmp_path: Path) -> None:
    path = tmp_path / "facts.yaml"
    write_yaml(path, QUBES)

    async def body() -> None:
        source = FileFacts(path, poll_seconds=0.02)
        assert source.read() == EXPECTED
        updates = Updates(source.changes())
        try:
            write_yaml(path, QUBES)  # rewritten, same values
            assert await updates.quiet()
            write_yaml(path, {**QUBES, CONNECTED_IPS: "10.137.0.10"})
            update = await updates.next()
            assert isinstance(update, FactsChanged)
            assert update.changed == {CONNECTED_IPS}
            assert update.facts.downstream.connected == {IPv4Address("10.137.0.10")}
            write_yaml(path, {**QUBES, CONNECTED_IPS: "10.137.0.10 x"})
            invalid = await updates.next()
            assert isinstance(invalid, FactsInvalid) and invalid.changed == {CONNECTED_IPS}
            path.unlink()
            assert isinstance(await updates.next(), FactsSourceLost)
            write_yaml(path, QUBES)
            back = await updates.next()
            assert isinstance(back, FactsChanged) and back.facts == EXPECTED
        finally:
            await updates.stop()

    asyncio.run(body())


# ------------------------------------------------------------------ QubesDB


@pytest.fixture
def fake() -> Iterator[FakeQubesDB]:
    fake = FakeQubesDB()
    for path, value in QUBES.items():
        fake.dom0_write(path, value)
    yield fake
    assert not fake.hung


def test_qubesdb_source_reads_the_keys(fake: FakeQubesDB) -> None:
    db = QubesDBAdapter(fake.binding())
    try:
        assert QubesDBFacts(db).read() == EXPECTED
        fake.dom0_write("/qubes-ip", b"\xff")
        with pytest.raises(FactsError, match="not UTF-8"):
            QubesDBFacts(db).read()
        fake.stop()
        with pytest.raises(FactsUnavailable):
            QubesDBFacts(db).read()
    finally:
        db.close()


def test_qubesdb_source_watches(fake: FakeQubesDB) -> None:
    async def body() -> None:
        db = QubesDBAdapter(fake.binding(), retry_delays=FAST)
        source = QubesDBFacts(db)
        assert source.read() == EXPECTED
        updates = Updates(source.changes())
        try:
            assert await updates.quiet(0.1)  # the first resync finds nothing new
            fake.dom0_write("/connected-ips", "10.137.0.10 10.137.0.11")  # unchanged rewrite
            fake.dom0_write("/qubes-firewall/10.137.0.10/policy", "drop")  # not ours
            fake.dom0_write("/vm-config/unrelated", "x")  # under a watched subtree, not ours
            assert await updates.quiet(0.1)
            fake.dom0_write("/connected-ips", "10.137.0.10")
            update = await updates.next()
            assert isinstance(update, FactsChanged) and update.changed == {"/connected-ips"}
            fake.dom0_write(PROFILE, "home.ovpn")
            update = await updates.next()
            assert isinstance(update, FactsChanged) and update.facts.profile == "home.ovpn"
            fake.dom0_rm("/vm-config/")  # a whole subtree removed: one '/vm-config/' event
            update = await updates.next()
            assert isinstance(update, FactsChanged)
            assert update.changed == {PROFILE, LOG_LEVEL}
            assert update.facts.profile is None

            fake.restart()
            assert isinstance(await updates.next(), FactsSourceLost)
            assert await updates.quiet(0.2)  # resynced: nothing changed meanwhile
            fake.dom0_write("/qubes-gateway", "10.137.0.1")
            update = await updates.next()
            assert isinstance(update, FactsChanged) and update.changed == {"/qubes-gateway"}
            fake.dom0_write("/qubes-gateway", "gateway")
            invalid = await updates.next()
            assert isinstance(invalid, FactsInvalid)
            assert [p.path for p in invalid.error.problems] == ["/qubes-gateway"]
        finally:
            await updates.stop()
            db.close()

    asyncio.run(body())


async def until_facts(updates: Updates, expected: NetworkFacts) -> set[str]:
    """Updates until the facts equal `expected` (dom0 writes reach the VM's daemon over vchan,
    asynchronously, one key at a time); the union of their changed paths."""
    changed: set[str] = set()
    for _ in range(50):
        update = await updates.next()
        if isinstance(update, FactsChanged):
            changed |= update.changed
            if update.facts == expected:
                return changed
    raise AssertionError("the facts never reached the expected value")


def test_qubesdb_source_on_the_real_daemon(real_qubesdb: RealQubesDB) -> None:
    dom0 = real_qubesdb.dom0
    for path, value in QUBES.items():
        dom0.write(path, value)

    async def body() -> None:
        db = QubesDBAdapter(real_qubesdb.binding(), retry_delays=FAST)
        source = QubesDBFacts(db)
        updates = Updates(source.changes())
        try:
            assert await until_facts(updates, EXPECTED) == set(QUBES)  # all news at first
            dom0.write(PROFILE, "home.ovpn")
            home = replace(EXPECTED, profile="home.ovpn")
            assert await until_facts(updates, home) == {PROFILE}
            real_qubesdb.restart_vm()
            assert isinstance(await updates.next(), FactsSourceLost)
            dom0.write(CONNECTED_IPS, "")
            alone = replace(home, downstream=replace(EXPECTED.downstream, connected=frozenset()))
            assert CONNECTED_IPS in await until_facts(updates, alone)
            assert await updates.quiet()
        finally:
            await updates.stop()
            db.close()
            for path in QUBES:
                dom0.rm(path)

    asyncio.run(body())
