"""The checker CLI: verdicts, FILE:LINE errors, --json redaction, --inline output."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from miragevpn.config import parse_config
from miragevpn.config.check import main

BASE = "client\ndev tun\nremote vpn.example.org 443 tcp\nca ca.crt\nauth-user-pass creds\n"


@pytest.fixture
def config_dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ca.crt").write_bytes(files["ca.crt"])
    (sub / "creds").write_bytes(b"bob\nsw0rdfish\n")
    (sub / "c.ovpn").write_text(BASE)
    return sub


def test_usable_summary(
    config_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")  # relative names resolve against the config's directory
    assert main([str(config_dir / "c.ovpn")]) == 0
    out = capsys.readouterr().out
    assert "remote vpn.example.org port 443 tcp" in out and "user bob" in out


def test_error_lines(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = config_dir / "bad.ovpn"
    bad.write_bytes(b"client\ndev tap\n")
    missing = config_dir / "nope.ovpn"
    assert main([str(config_dir / "c.ovpn"), str(bad), str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: dev: " in err
    assert f"{missing}: cannot read" in err
    assert "Traceback" not in err


def test_json_redacts(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", str(config_dir / "c.ovpn")]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["config"]["auth_user_pass"] == {"username": "bob", "password": "<redacted>"}
    assert "sw0rdfish" not in out


def test_inline_writes_private_self_contained(config_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.ovpn"
    assert main(["--inline", str(out), str(config_dir / "c.ovpn")]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert "<ca>" in text and "sw0rdfish" in text

    def no_files(path: str) -> bytes:
        raise AssertionError(path)

    parsed = parse_config(text, read_file=no_files)
    assert parsed.auth_user_pass is not None and parsed.auth_user_pass.username == "bob"
