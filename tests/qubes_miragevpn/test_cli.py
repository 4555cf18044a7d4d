"""`miragevpn-client`: help, config errors as FILE:LINE, credentials, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import miragevpn.config
from miragevpn.config.model import AuthUserPass, Config, Secret
from miragevpn.errors import ConfigError
from qubes_miragevpn.cli import credentials_for, main

needs_parser = pytest.mark.skipif(
    not hasattr(miragevpn.config, "parse_config"), reason="config parser not landed yet"
)


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for words in ("exit codes:", "examples:", "--dev", "explicit-exit-notify", "never logged"):
        assert words in out


def test_usage_error_is_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_unreadable_config_is_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ovpn"
    assert main([str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{missing}: cannot read the config file")


@needs_parser
def test_config_error_is_file_line_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.ovpn"
    config.write_text("client\ndev tun\nremote vpn.example 1194 udp\nca missing-ca.crt\n")
    assert main([str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{config}:4:"), err
    assert "missing-ca.crt" in err


def test_credentials_complete_are_used_as_is() -> None:
    auth = AuthUserPass(username="alice", password=Secret(b"s3cret"))
    assert credentials_for(Config(auth_user_pass=auth)) == auth
    assert credentials_for(Config()) is None


def test_credentials_without_a_terminal_are_a_config_error() -> None:
    code = (
        "import sys\n"
        "from miragevpn.config.model import AuthUserPass, Config\n"
        "from qubes_miragevpn.cli import credentials_for\n"
        "try:\n"
        "    credentials_for(Config(auth_user_pass=AuthUserPass()))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True
    ).stdout
    assert out.startswith("ConfigError") and "not a terminal" in out


def test_config_error_without_file_gets_one() -> None:
    assert str(ConfigError("x", line=3).with_file("a.ovpn")) == "a.ovpn:3: x"
