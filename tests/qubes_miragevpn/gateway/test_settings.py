"""settings.yaml: the model, the defaults, and errors that name the file and line."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from qubes_miragevpn.gateway.settings import (
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
)


def test_full_file() -> None:
    text = """
# answer the AppVMs' DNS with these
dns:
  - 9.9.9.9
  - 149.112.112.112
downstream: [eth1, br-lan]
log_level: INFO
"""
    assert parse_settings(text) == Settings(
        dns=(IPv4Address("9.9.9.9"), IPv4Address("149.112.112.112")),
        downstream=("eth1", "br-lan"),
        log_level="info",
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_means_defaults(text: str) -> None:
    assert parse_settings(text) == Settings()


def test_single_values_and_empty_lists() -> None:
    assert parse_settings("dns: 1.1.1.1\ndownstream: eth1\n") == Settings(
        dns=(IPv4Address("1.1.1.1"),), downstream=("eth1",)
    )
    assert parse_settings("dns: []\ndownstream: []\n") == Settings()


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("log_level: info\nlog-level: debug\n", 2, "unknown setting 'log-level'"),
        ("dns: [1.1.1.1]\ndns: [8.8.8.8]\n", 2, "dns: given twice (first on line 1)"),
        ("dns:\n  - 1.1.1.1\n  - nine\n", 3, "'nine' is not an IP address"),
        ("dns:\n  - 2620:fe::fe\n", 2, "is IPv6"),
        ("dns: [127.0.0.1]\n", 1, "not a unicast address"),
        ("dns: [1.1.1.1, 1.1.1.1]\n", 1, "listed twice"),
        ("dns: {a: 1}\n", 1, "expected a list"),
        ("\n\ndownstream:\n  - eth0\n  - eth/1\n", 5, "not an interface name"),
        ("downstream: [averyveryverylongname]\n", 1, "1 to 15 characters"),
        ("downstream: [7]\n", 1, "not an interface name"),
        ("log_level: loud\n", 1, "expected one of debug, info, warning, error"),
        ("dns: [1.1.1.1\n", 2, "not valid YAML"),
        ("- dns\n", 1, "expected a mapping"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(text, file="/rw/config/qubes-miragevpn/settings.yaml")
    assert info.value.line == line, str(info.value)
    assert message in info.value.message
    assert str(info.value).startswith(f"/rw/config/qubes-miragevpn/settings.yaml:{line}: ")


def test_load_from_disk(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "settings.yaml") == Settings()  # absent: defaults
    path = tmp_path / "settings.yaml"
    path.write_text("log_level: debug\n")
    assert load_settings(path) == Settings(log_level="debug")
    path.write_bytes(b"log_level: \xff\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(path)
    path.write_text("log_level: info\n" + "#" * 70000)
    with pytest.raises(SettingsError, match="larger than"):
        load_settings(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(SettingsError, match="cannot read") as info:
        load_settings(path)
    assert info.value.file == str(path)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.log_level = "debug"  # type: ignore[misc]
