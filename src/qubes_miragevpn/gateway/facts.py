"""Network facts: what Qubes tells the gateway about its network, from QubesDB or a YAML file.

One frozen `NetworkFacts` value, built by the pure `parse_facts(values)` from a mapping of
QubesDB paths to strings (the keys in `FACT_PATHS`, plus our knobs under `/vm-config/miragevpn-`).
Two sources give that mapping, behind the `FactsSource` protocol:

    QubesDBFacts(db)    reads the keys through the QubesDB adapter; watches them
    FileFacts(path)     a YAML mapping of the same paths to strings (`--qubesdb-file`): the
                        development aid, and the plain-Linux router mode; polls the file

`source.read()` gives the current facts (or raises `FactsError` listing every bad value, with
where it came from). `source.changes()` is an endless stream of `FactsChanged` (the facts and
the paths whose value changed since the last read), `FactsInvalid` (a changed value is bad)
and `FactsSourceLost` (QubesDB went away; the last facts stay the best knowledge). A write
that leaves every value as it was (Qubes rewrites keys, and every write fires watches) gives
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from pathlib import Path
from typing import Protocol, TypeVar

from .qubesdb import (
    MAX_VALUE,
    ConnectionLost,
    InvalidPathError,
    KeyChanged,
    QubesDBClient,
    QubesDBError,
    Resynced,
    check_key,
)

log = logging.getLogger(__name__)

# The keys the gateway reads (reference/qubes-integration.md §1.3); dom0 writes them.
IP = "/qubes-ip"
GATEWAY = "/qubes-gateway"
PRIMARY_DNS = "/qubes-primary-dns"
SECONDARY_DNS = "/qubes-secondary-dns"
IP6 = "/qubes-ip6"
GATEWAY6 = "/qubes-gateway6"
NETVM_NETWORK = "/qubes-netvm-network"
NETVM_NETMASK = "/qubes-netvm-netmask"
NETVM_GATEWAY = "/qubes-netvm-gateway"
NETVM_PRIMARY_DNS = "/qubes-netvm-primary-dns"
NETVM_SECONDARY_DNS = "/qubes-netvm-secondary-dns"
NETVM_GATEWAY6 = "/qubes-netvm-gateway6"
CONNECTED_IPS = "/connected-ips"
CONNECTED_IPS6 = "/connected-ips6"
SERVICE = "/qubes-service/qubes-miragevpn"
DEFAULT_USER = "/default-user"  # the qube's desktop user (who sees the notifications)
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
KNOBS = "/vm-config/miragevpn-"  # features vm-config.miragevpn-* set in dom0
PROFILE = KNOBS + "profile"  # which profile file in the config folder
LOG_LEVEL = KNOBS + "log-level"
# Qubes gives a netvm its AppVMs' addresses (/connected-ips, /mapped-ip/<ip>/...), never their
# names: dom0 may tell them, `qvm-features sys-vpn vm-config.miragevpn-names
# "10.137.0.12=work-vm ..."`, for the blocked-traffic report.
NAMES = KNOBS + "names"
_QUBE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")  # qubes/vm/__init__.py validate_name

FACT_PATHS = (
    IP,
    GATEWAY,
    PRIMARY_DNS,
    SECONDARY_DNS,
    IP6,
    GATEWAY6,
    NETVM_NETWORK,
    NETVM_NETMASK,
    NETVM_GATEWAY,
    NETVM_PRIMARY_DNS,
    NETVM_SECONDARY_DNS,
    NETVM_GATEWAY6,
    CONNECTED_IPS,
    CONNECTED_IPS6,
    SERVICE,
    DEFAULT_USER,
)
KNOB_PATHS = (PROFILE, LOG_LEVEL, NAMES)
# Without these the gateway can neither reach the server nor serve AppVMs.
REQUIRED_PATHS = (IP, GATEWAY, NETVM_GATEWAY)
LOG_LEVELS = ("debug", "info", "warning", "error")
FILE_POLL_SECONDS = 1.0

A = TypeVar("A", IPv4Address, IPv6Address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Uplink:
    """Our side towards the upstream net qube (sys-net, sys-firewall)."""

    address: IPv4Address | None = None  # /qubes-ip
    gateway: IPv4Address | None = None  # /qubes-gateway
    dns: tuple[IPv4Address, ...] = ()  # /qubes-primary-dns, /qubes-secondary-dns
    address6: IPv6Address | None = None  # /qubes-ip6
    gateway6: IPv6Address | None = None  # /qubes-gateway6


@dataclass(frozen=True, slots=True, kw_only=True)
class Downstream:
    """Our side towards the AppVMs whose netvm we are."""

    network: IPv4Network | None = None  # /qubes-netvm-network and -netmask (/32 when absent)
    gateway: IPv4Address | None = None  # /qubes-netvm-gateway: our address as AppVMs see it
    virtual_dns: tuple[IPv4Address, ...] = ()  # /qubes-netvm-primary-dns, -secondary-dns
    gateway6: IPv6Address | None = None  # /qubes-netvm-gateway6: AppVMs get IPv6
    connected: frozenset[IPv4Address] = frozenset()  # /connected-ips: running AppVMs
    connected6: frozenset[IPv6Address] = frozenset()  # /connected-ips6


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkFacts:
    uplink: Uplink = Uplink()
    downstream: Downstream = Downstream()
    service_enabled: bool | None = None  # /qubes-service/qubes-miragevpn; None when absent
    profile: str | None = None  # /vm-config/miragevpn-profile ('' counts as not set)
    log_level: str | None = None  # /vm-config/miragevpn-log-level: one of LOG_LEVELS
    unknown_knobs: tuple[str, ...] = ()  # other /vm-config/miragevpn-* keys (typos?)
    default_user: str | None = None  # /default-user: a plain login name
    appvm_names: tuple[tuple[IPv4Address | IPv6Address, str], ...] = ()  # /vm-config/...-names

    @property
    def missing(self) -> tuple[str, ...]:
        """The REQUIRED_PATHS that are absent, in that order."""
        present = {
            IP: self.uplink.address,
            GATEWAY: self.uplink.gateway,
            NETVM_GATEWAY: self.downstream.gateway,
        }
        return tuple(path for path in REQUIRED_PATHS if present[path] is None)


# ------------------------------------------------------------------ parsing (pure)


@dataclass(frozen=True, slots=True)
class FactProblem:
    path: str
    value: str
    message: str
    where: str  # "QubesDB (written by dom0)", "facts.yaml:12", ...

    def __str__(self) -> str:
        return f"{self.where}: {self.path} = {self.value!r}: {self.message}"


class FactsError(Exception):
    """Network facts we cannot use; `problems` lists every one, each with where it came from."""

    def __init__(self, problems: tuple[FactProblem, ...]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


def parse_facts(
    values: Mapping[str, str], *, where: Callable[[str], str] = lambda _: "QubesDB"
) -> NetworkFacts:
    """`NetworkFacts` from QubesDB paths and their values (absent key = not in `values`).

    Every value is checked; all problems are raised together as one `FactsError`. Paths outside
    FACT_PATHS and /vm-config/miragevpn-* are ignored (the caller decides whether that is an
    error). `where(path)` says where a value came from, for the messages.
    """
    problems: list[FactProblem] = []

    def problem(path: str, message: str) -> None:
        problems.append(FactProblem(path, values[path], message, where(path)))

    def v4(path: str) -> IPv4Address | None:
        return _address(values, path, IPv4Address, problem)

    def v6(path: str) -> IPv6Address | None:
        return _address(values, path, IPv6Address, problem)

    uplink = Uplink(
        address=v4(IP),
        gateway=v4(GATEWAY),
        dns=_present(v4(PRIMARY_DNS), v4(SECONDARY_DNS)),
        address6=v6(IP6),
        gateway6=v6(GATEWAY6),
    )
    downstream = Downstream(
        network=_network(values, v4(NETVM_NETWORK), v4(NETVM_NETMASK), problem),
        gateway=v4(NETVM_GATEWAY),
        virtual_dns=_present(v4(NETVM_PRIMARY_DNS), v4(NETVM_SECONDARY_DNS)),
        gateway6=v6(NETVM_GATEWAY6),
        connected=_address_set(values, CONNECTED_IPS, IPv4Address, problem),
        connected6=_address_set(values, CONNECTED_IPS6, IPv6Address, problem),
    )
    service: bool | None = None
    if SERVICE in values:
        if values[SERVICE] in ("0", "1"):
            service = values[SERVICE] == "1"
        else:
            problem(SERVICE, "a Qubes service flag is '1' (enabled) or '0' (disabled)")
    profile = values.get(PROFILE) or None
    if profile is not None and not _plain_file_name(profile):
        problem(PROFILE, "name a file in the config folder: no '/', not starting with '.'")
        profile = None
    log_level = values.get(LOG_LEVEL) or None
    if log_level is not None:
        log_level = log_level.strip().lower()
        if log_level not in LOG_LEVELS:
            problem(LOG_LEVEL, f"the log level is one of {', '.join(LOG_LEVELS)}")
            log_level = None
    unknown = tuple(sorted(p for p in values if p.startswith(KNOBS) and p not in KNOB_PATHS))
    default_user = values.get(DEFAULT_USER) or None
    if default_user is not None and not _USER_NAME.fullmatch(default_user):
        problem(DEFAULT_USER, "a login name: lower-case letters, digits, '_' and '-'")
        default_user = None
    names = _names(values, problem)
    if problems:
        raise FactsError(tuple(problems))
    return NetworkFacts(
        uplink=uplink,
        downstream=downstream,
        service_enabled=service,
        profile=profile,
        log_level=log_level,
        unknown_knobs=unknown,
        default_user=default_user,
        appvm_names=names,
    )


def _names(
    values: Mapping[str, str], problem: Callable[[str, str], None]
) -> tuple[tuple[IPv4Address | IPv6Address, str], ...]:
    """`ADDRESS=NAME ...` of /vm-config/miragevpn-names, sorted by address."""
    found: dict[IPv4Address | IPv6Address, str] = {}
    bad: list[str] = []
    for word in values.get(NAMES, "").split():
        address, _, name = word.partition("=")
        try:
            parsed = ip_address(address)
        except ValueError:
            bad.append(word)
            continue
        if not _QUBE_NAME.fullmatch(name):
            bad.append(word)
            continue
        found[parsed] = name
    if bad:
        problem(NAMES, f"not ADDRESS=QUBE-NAME words: {', '.join(bad)}")
    return tuple(sorted(found.items(), key=lambda item: (item[0].version, item[0])))


def _address(
    values: Mapping[str, str],
    path: str,
    kind: type[A],
    problem: Callable[[str, str], None],
) -> A | None:
    text = values.get(path)
    if text is None or text == "":
        return None  # absent, or written empty: not set
    family = "IPv4" if kind is IPv4Address else "IPv6"
    try:
        address = kind(text.strip())
    except ValueError:
        problem(path, f"not an {family} address")
        return None
    if address.is_multicast or address.is_unspecified:
        problem(path, f"not a unicast {family} address")
        return None
    return address


def _address_set(
    values: Mapping[str, str],
    path: str,
    kind: type[A],
    problem: Callable[[str, str], None],
) -> frozenset[A]:
    addresses: set[A] = set()
    bad: list[str] = []
    for word in values.get(path, "").split():
        try:
            addresses.add(kind(word))
        except ValueError:
            bad.append(word)
    if bad:
        family = "IPv4" if kind is IPv4Address else "IPv6"
        problem(path, f"not {family} addresses: {', '.join(bad)} (space-separated addresses)")
    return frozenset(addresses)


def _network(
    values: Mapping[str, str],
    network: IPv4Address | None,
    netmask: IPv4Address | None,
    problem: Callable[[str, str], None],
) -> IPv4Network | None:
    if network is None:
        return None
    try:
        return IPv4Network((network, str(netmask or "255.255.255.255")), strict=False)
    except ValueError:
        problem(NETVM_NETMASK, "not a netmask (like 255.255.255.0)")
        return None


def _present(*addresses: IPv4Address | None) -> tuple[IPv4Address, ...]:
    return tuple(a for a in addresses if a is not None)


def _plain_file_name(name: str) -> bool:
    return "/" not in name and "\0" not in name and not name.startswith(".")


# ------------------------------------------------------------------ sources


@dataclass(frozen=True, slots=True, kw_only=True)
class FactsChanged:
    """New facts; `changed` lists the paths whose value differs from the last read."""

    facts: NetworkFacts
    changed: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class FactsInvalid:
    """The values changed, and some are unusable (stay on the safe side, and say why)."""

    error: FactsError
    changed: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class FactsSourceLost:
    """The source went away (QubesDB restarting); it is retried, and read again when back."""

    reason: str


FactsUpdate = FactsChanged | FactsInvalid | FactsSourceLost


class FactsUnavailable(Exception):
    """The facts cannot be read at all right now (QubesDB unreachable, file unreadable)."""


class FactsSource(Protocol):
    """Where the network facts come from: QubesDB in a qube, a YAML file elsewhere."""

    def read(self) -> NetworkFacts:
        """The current facts. Raises `FactsError` (bad values) or `FactsUnavailable`."""
        ...

    def changes(self) -> AsyncIterator[FactsUpdate]:
        """Updates for ever, each only when a value really changed since the last read."""
        ...


class _Tracker:
    """The last values read, to report only real changes."""

    def __init__(self) -> None:
        self.last: dict[str, str] | None = None

    def update(
        self, values: dict[str, str], parse: Callable[[dict[str, str]], NetworkFacts]
    ) -> FactsUpdate | None:
        before = self.last or {}
        changed = frozenset(
            p for p in before.keys() | values.keys() if before.get(p) != values.get(p)
        )
        if self.last is not None and not changed:
            return None
        self.last = values
        try:
            return FactsChanged(facts=parse(values), changed=changed)
        except FactsError as exc:
            return FactsInvalid(error=exc, changed=changed)


class QubesDBFacts:
    """Facts from QubesDB, watched through the adapter."""

    def __init__(self, db: QubesDBClient) -> None:
        self._db = db
        self._tracker = _Tracker()
        self._watching = False

    def read(self) -> NetworkFacts:
        values = self._read_values()
        self._tracker.last = values
        return parse_facts(values, where=_from_qubesdb)

    def _read_values(self) -> dict[str, str]:
        try:
            raw = {path: self._db.read(path) for path in FACT_PATHS}
            raw.update(self._db.multiread(KNOBS))
        except QubesDBError as exc:
            raise FactsUnavailable(str(exc)) from exc
        values: dict[str, str] = {}
        bad: list[FactProblem] = []
        for path, data in raw.items():
            if data is None:
                continue
            try:
                values[path] = data.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(FactProblem(path, repr(data), "not UTF-8 text", _from_qubesdb(path)))
        if bad:
            raise FactsError(tuple(bad))
        return values

    async def changes(self) -> AsyncIterator[FactsUpdate]:
        if not self._watching:
            for path in FACT_PATHS:
                self._db.watch(path)
            self._db.watch("/vm-config/")  # our knobs, and their typos
            self._watching = True
        async for change in self._db.changes():
            match change:
                case ConnectionLost(reason=reason):
                    yield FactsSourceLost(reason=reason)
                    continue
                case KeyChanged(path=path) if not _concerns_us(path):
                    continue
                case KeyChanged() | Resynced():
                    pass
            try:
                values = self._read_values()
            except FactsUnavailable as exc:
                log.info("network facts not re-read: %s (waiting for QubesDB)", exc)
                continue
            except FactsError as exc:
                yield FactsInvalid(error=exc, changed=frozenset(p.path for p in exc.problems))
                continue
            update = self._tracker.update(values, lambda v: parse_facts(v, where=_from_qubesdb))
            if update is not None:
                yield update


def _from_qubesdb(path: str) -> str:
    return "QubesDB (set from dom0)"


def _concerns_us(path: str) -> bool:
    """Does an event for `path` (a key, or a removed subtree ending in '/') touch our keys?"""
    if path.endswith("/"):
        return any(p.startswith(path) for p in FACT_PATHS) or KNOBS.startswith(path)
    return path in FACT_PATHS or path.startswith(KNOBS)


class FileFacts:
    """Facts from a YAML file (`--qubesdb-file`): a mapping of the QubesDB paths to strings.

    Every key must be one the gateway reads (FACT_PATHS or /vm-config/miragevpn-*), every value
    a scalar written as QubesDB would hold it; problems name the file and line. `changes()`
    polls the file every `poll_seconds`.
    """

    def __init__(self, path: Path, *, poll_seconds: float = FILE_POLL_SECONDS) -> None:
        self.path = path
        self._poll_seconds = poll_seconds
        self._tracker = _Tracker()
        self._read_stamp: tuple[int, int, int] | None = None  # the file as `read()` saw it

    def read(self) -> NetworkFacts:
        stamp = self._stamp()
        values, lines = self._read_values()
        self._tracker.last = values
        self._read_stamp = stamp
        return self._parse(values, lines)

    def _parse(self, values: dict[str, str], lines: dict[str, int]) -> NetworkFacts:
        return parse_facts(values, where=lambda path: f"{self.path}:{lines[path]}")

    def _read_values(self) -> tuple[dict[str, str], dict[str, int]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FactsUnavailable(f"cannot read the facts file {self.path}: {exc}") from exc
        return parse_facts_file(text, name=str(self.path))

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def changes(self) -> AsyncIterator[FactsUpdate]:
        """Like `QubesDBFacts.changes()`: the first update is the current facts unless `read()`
        saw them already; then one update per real change, checked every `poll_seconds`."""
        stamp = self._read_stamp if self._tracker.last is not None else (-1, -1, -1)
        while True:
            now = self._stamp()
            if now == stamp:
                await asyncio.sleep(self._poll_seconds)
                continue
            stamp = now
            try:
                values, lines = self._read_values()
            except FactsUnavailable as exc:
                yield FactsSourceLost(reason=str(exc))
                self._tracker.last = None  # report everything when it comes back
                continue
            except FactsError as exc:
                yield FactsInvalid(error=exc, changed=frozenset(p.path for p in exc.problems))
                continue
            update = self._tracker.update(values, partial(self._parse, lines=lines))
            if update is not None:
                yield update


def parse_facts_file(text: str, *, name: str) -> tuple[dict[str, str], dict[str, int]]:
    """The values and their line numbers from a facts file; `FactsError` for a bad file.

    PyYAML is imported here, not with the module: on a Qubes VM the facts come from QubesDB
    and the daemon never loads the parser (about 1 MB of memory)."""
    import yaml

    def fail(line: int, path: str, value: str, message: str) -> FactsError:
        return FactsError((FactProblem(path, value, message, f"{name}:{line}"),))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise fail(line, "", "", f"not valid YAML: {exc}") from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise fail(root.start_mark.line + 1, "", "", "expected a mapping of QubesDB paths")
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[FactProblem] = []
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        where = f"{name}:{line}"
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(FactProblem("", "", "a key must be a QubesDB path", where))
            continue
        path = str(key_node.value)
        if path in lines:
            problems.append(
                FactProblem(path, "", f"given twice (first on line {lines[path]})", where)
            )
            continue
        lines[path] = line
        try:
            check_key(path)
        except InvalidPathError as exc:
            problems.append(FactProblem(path, "", str(exc), where))
            continue
        if path not in FACT_PATHS and not path.startswith(KNOBS):
            problems.append(FactProblem(path, "", "not a key the gateway reads", where))
            continue
        if not isinstance(value_node, yaml.ScalarNode) or value_node.tag.endswith(":null"):
            message = "give a string ('' for an empty value) or leave the key out"
            problems.append(FactProblem(path, "", message, where))
            continue
        value = str(value_node.value)
        if len(value.encode()) > MAX_VALUE or "\0" in value:
            message = f"QubesDB holds at most {MAX_VALUE} bytes and no NUL"
            problems.append(FactProblem(path, value[:40], message, where))
            continue
        values[path] = value
    if problems:
        raise FactsError(tuple(problems))
    return values, lines
