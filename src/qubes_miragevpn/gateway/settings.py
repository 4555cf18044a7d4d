"""The optional `settings.yaml` in the config folder: a few choices that are not in the profile.

    dns: [9.9.9.9, 149.112.112.112]   # answer the AppVMs' DNS with these (through the tunnel)
                                      # instead of the servers the VPN pushed
    downstream: [eth1]                # plain-Linux router mode: the private-side interfaces
                                      # (in a qube, the AppVM side is found by Qubes' vifs)
    log_level: info                   # debug | info | warning | error

Read with PyYAML's `safe_load`; the model is frozen. A missing file means the defaults. Every
mistake is a `SettingsError` naming the file and line: unknown keys (typos), duplicate keys,
values of the wrong kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import yaml

SETTINGS_FILE = "settings.yaml"
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_DNS = 8
MAX_FILE = 64 * 1024
IFNAMSIZ = 16  # Linux interface names: at most 15 bytes
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")  # what the kernel's dev_valid_name() rejects


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    dns: tuple[IPv4Address, ...] = ()  # empty: use what the VPN pushes
    downstream: tuple[str, ...] = ()  # empty: Qubes mode (AppVMs on vif interfaces)
    log_level: str | None = None  # None: the default (or /vm-config/miragevpn-log-level)


class SettingsError(Exception):
    """A settings file we cannot use: the user's file, at `file:line`."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


def load_settings(path: Path) -> Settings:
    """The settings in `path`; the defaults when it does not exist."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise SettingsError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    if len(data) > MAX_FILE:
        raise SettingsError(f"larger than {MAX_FILE} bytes", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError("not UTF-8 text", file=str(path)) from None
    return parse_settings(text, file=str(path))


def parse_settings(text: str, *, file: str = SETTINGS_FILE) -> Settings:
    """`Settings` from YAML text; `SettingsError` with the line for any mistake."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # the same document, with lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"not valid YAML: {problem}", file=file, line=line) from None
    if data is None:
        return Settings()
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise SettingsError("expected a mapping like 'log_level: info'", file=file, line=1)
    lines = _key_lines(root, file)

    def fail(key: str, message: str, index: int | None = None) -> SettingsError:
        line = lines[key][0] if index is None else lines[key][1].get(index, lines[key][0])
        return SettingsError(f"{key}: {message}", file=file, line=line)

    known: dict[str, Callable[[str, Any, Callable[..., SettingsError]], Any]] = {
        "dns": _dns,
        "downstream": _downstream,
        "log_level": _log_level,
    }
    values: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in known:
            line = lines.get(str(key), (None, {}))[0]
            choices = ", ".join(known)
            raise SettingsError(f"unknown setting {key!r} (known: {choices})", file=file, line=line)
        values[key] = known[key](key, value, fail)
    return Settings(**values)


def _key_lines(root: yaml.MappingNode, file: str) -> dict[str, tuple[int, dict[int, int]]]:
    """Each top-level key's line, and the lines of the items of a list value."""
    lines: dict[str, tuple[int, dict[int, int]]] = {}
    for key_node, value_node in root.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        if key in lines:
            raise SettingsError(
                f"{key}: given twice (first on line {lines[key][0]})", file=file, line=line
            )
        items = {}
        if isinstance(value_node, yaml.SequenceNode):
            items = {i: item.start_mark.line + 1 for i, item in enumerate(value_node.value)}
        lines[key] = (line, items)
    return lines


def _as_list(key: str, value: Any, fail: Callable[..., SettingsError]) -> list[Any]:
    if isinstance(value, str | int):
        return [value]  # one item without brackets
    if not isinstance(value, list):
        raise fail(key, "expected a list, like [a, b]")
    return value


def _dns(key: str, value: Any, fail: Callable[..., SettingsError]) -> tuple[IPv4Address, ...]:
    items = _as_list(key, value, fail)
    if len(items) > MAX_DNS:
        raise fail(key, f"at most {MAX_DNS} servers")
    servers: list[IPv4Address] = []
    for i, item in enumerate(items):
        try:
            address = ipaddress.ip_address(str(item))
        except ValueError:
            raise fail(key, f"{item!r} is not an IP address", i) from None
        if not isinstance(address, IPv4Address):
            raise fail(key, f"{item} is IPv6; the Qubes DNS addresses AppVMs use are IPv4", i)
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            raise fail(key, f"{item} is not a unicast address a resolver can have", i)
        if address in servers:
            raise fail(key, f"{item} is listed twice", i)
        servers.append(address)
    return tuple(servers)


def _downstream(key: str, value: Any, fail: Callable[..., SettingsError]) -> tuple[str, ...]:
    items = _as_list(key, value, fail)
    names: list[str] = []
    for i, item in enumerate(items):
        name = str(item)
        if not isinstance(item, str) or not 0 < len(name.encode()) < IFNAMSIZ:
            raise fail(key, f"{item!r} is not an interface name (1 to 15 characters)", i)
        if name in (".", "..") or _IFNAME_FORBIDDEN.search(name):
            raise fail(key, f"{name!r} is not an interface name ('/', ':' or spaces)", i)
        if name in names:
            raise fail(key, f"{name} is listed twice", i)
        names.append(name)
    return tuple(names)


def _log_level(key: str, value: Any, fail: Callable[..., SettingsError]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LOG_LEVELS:
        raise fail(key, f"{value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return value.strip().lower()
