"""`miragevpn-client`: help, config errors as FILE:LINE, credentials, exit codes."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import miragevpn.config
from miragevpn.config.model import AuthUserPass, Config, Secret
from miragevpn.errors import ConfigError
from qubes_miragevpn.cli import credentials_for, main
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, Pki, make_pki, write_pki

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


@needs_parser
def test_config_error_text_from_the_profile_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.ovpn"
    config.write_text("client\nremote vpn.example 1194 udp\nca \x1b]0;owned\x07ca.crt\n")
    assert main([str(config)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err, repr(err)
    assert err.startswith(f"{config}:3:") and "\\x1b]0;owned\\x07ca.crt" in err, err


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


# ---------------------------------------------------------------- the key's passphrase

PASSPHRASE_CHECK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from qubes_miragevpn.cli import load_config, passphrase_for\n"
    "try:\n"
    "    config = passphrase_for(load_config(Path(sys.argv[1])))\n"
    "except Exception as e:\n"
    "    print(type(e).__name__, getattr(e, 'message', e), flush=True)\n"
    "else:\n"
    "    print('unlocked', config.key_passphrase is not None, config.ca is not None, flush=True)\n"
)


def _locked_profile(tmp_path: Path, pki: Pki, *extra: str) -> Path:
    files = write_pki(pki, tmp_path)
    config = tmp_path / "locked.ovpn"
    lines = ["client", "dev tun", "remote 192.0.2.1", *extra]
    config.write_text("\n".join(lines) + "\n")
    assert files.ca.exists()
    return config


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def test_passphrase_without_a_terminal_is_a_quick_config_error(tmp_path: Path, pki: Pki) -> None:
    config = _locked_profile(
        tmp_path, pki, "ca ca.crt", "cert client.crt", "key client-encrypted.key"
    )
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", PASSPHRASE_CHECK, str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout.startswith(
        "ConfigError the private key is encrypted, the config has no 'askpass FILE', "
        "and standard input is not a terminal to ask on: put the passphrase on the first line "
        "of a file (chmod 600) and add 'askpass FILE' to the config"
    ), run.stdout + run.stderr
    assert time.monotonic() - start < 20
    # the client itself: exit code 1 (config), FILE: askpass: the same words
    run = subprocess.run(
        [sys.executable, "-m", "qubes_miragevpn.cli", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert run.stderr.startswith(f"{config}: askpass: the private key is encrypted, "), run.stderr


def test_passphrase_from_the_askpass_file_needs_no_terminal(tmp_path: Path, pki: Pki) -> None:
    config = _locked_profile(tmp_path, pki, "pkcs12 client-protected.p12", "askpass askpass.txt")
    run = subprocess.run(
        [sys.executable, "-c", PASSPHRASE_CHECK, str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout == "unlocked True True\n", run.stdout + run.stderr


def _on_a_terminal(config: Path, *typed: bytes) -> str:
    """Run PASSPHRASE_CHECK with a pseudo-terminal as its standard input, type each of `typed`
    at each prompt in turn; what it printed (prompts included), bounded in time."""
    answers = list(typed)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", PASSPHRASE_CHECK, str(config)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the other side closed: the program ended
                    break
                if not chunk:
                    break
                seen += chunk
                if seen.endswith(b"Enter Private Key Password: ") and answers:
                    os.write(controller, answers.pop(0) + b"\n")
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(controller)
    return seen.decode(errors="replace")


@pytest.mark.parametrize(
    "extra",
    [
        ("ca ca.crt", "cert client.crt", "key client-encrypted.key"),
        ("ca ca.crt", "cert client.crt", "key client-encrypted-traditional.key"),
        ("pkcs12 client-protected.p12",),
    ],
)
def test_passphrase_is_asked_on_a_terminal(tmp_path: Path, pki: Pki, extra: tuple[str]) -> None:
    config = _locked_profile(tmp_path, pki, *extra)
    out = _on_a_terminal(config, ENCRYPTED_KEY_PASSPHRASE.encode())
    assert "Enter Private Key Password: " in out
    assert "unlocked True True" in out, out
    assert ENCRYPTED_KEY_PASSPHRASE not in out  # not echoed
    out = _on_a_terminal(config, b"wrong horse")
    assert "ConfigError the passphrase is wrong: it does not unlock the" in out, out


def test_auth_retry_interact_asks_again_after_a_wrong_passphrase(tmp_path: Path, pki: Pki) -> None:
    config = _locked_profile(tmp_path, pki, "pkcs12 client-protected.p12", "auth-retry interact")
    out = _on_a_terminal(config, b"wrong", ENCRYPTED_KEY_PASSPHRASE.encode())
    assert out.count("Enter Private Key Password: ") == 2, out
    assert "the passphrase is wrong: it does not unlock the PKCS#12 bundle" in out
    assert "try again (auth-retry interact)" in out
    assert "unlocked True True" in out, out
    out = _on_a_terminal(config, b"wrong", b"wrong again", b"still wrong")
    assert out.count("Enter Private Key Password: ") == 3, out
    assert "ConfigError the passphrase is wrong" in out, out
