"""The checker CLI: verdicts, FILE:LINE errors, --json redaction, --inline output, and the
hostile profiles of issue 8 (each refused in under a second with exit 1 and a plain message)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from miragevpn.config import parse_config
from qubes_miragevpn.configcheck import main
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, Pki, make_pki

BASE = "client\ndev tun\nremote vpn.example.org 443 tcp\nca ca.crt\nauth-user-pass creds\n"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def config_dir(tmp_path: Path, pki: Pki) -> Path:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ca.crt").write_text(pki.ca.cert_pem)
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


def test_compression_is_described_and_a_missing_library_said(
    config_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from miragevpn import compression

    (config_dir / "c.ovpn").write_text(BASE + "compress lz4-v2\n")
    assert main([str(config_dir / "c.ovpn")]) == 0
    out = capsys.readouterr().out
    assert (
        "  compression: compress lz4-v2, received packets decompressed (allow-compression asym); "
        "what we send is never compressed\n"
    ) in out
    assert "dropped" not in out
    monkeypatch.setattr(compression, "HAVE_LZ4", False)
    assert main([str(config_dir / "c.ovpn")]) == 0  # usable: the packets are dropped, said so
    out = capsys.readouterr().out
    assert (
        "  warning: compressed packets will be dropped: the Python module 'lz4.block' is not "
        "installed (Debian: python3-lz4; PyPI: lz4)\n"
    ) in out


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


# --------------------------------------------------------------------------- hostile profiles

HEAD = "client\ndev tun\nremote vpn.example.org\nca ca.crt\n"
SHADOW = b"toor:$y$j9T$s3cr3t:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n"
LEAK = "s3cr3t"


def _check(
    capsys: pytest.CaptureFixture[str], *argv: str, status: int = 1
) -> tuple[str, str, float]:
    start = time.monotonic()
    assert main(list(argv)) == status
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out, err, elapsed


@pytest.mark.parametrize("name", ["fifo", "/dev/stdin", "/proc/self/fd/0", "/proc/kmsg"])
def test_files_that_would_block_are_refused(
    config_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Finding 5: `ca fifo`, `ca /dev/stdin`... never block (standard input is a pipe here
    under pytest's capture, or the terminal: either would block a plain open/read)."""
    os.mkfifo(config_dir / "fifo")
    path = config_dir / "block.ovpn"
    path.write_text(f"client\ndev tun\nremote a\nca {name}\nauth-user-pass creds\n")
    _out, err, elapsed = _check(capsys, str(path))
    assert elapsed < 1.0
    assert f"{path}:4: ca: cannot read the CA certificate" in err


def test_config_that_is_a_fifo_is_refused(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(config_dir / "fifo.ovpn")
    _out, err, elapsed = _check(capsys, str(config_dir / "fifo.ovpn"))
    assert elapsed < 1.0 and "FIFO" in err


def test_outside_file_content_is_never_shown(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 6: `auth-user-pass /etc/shadow` (a stand-in outside the profile's folder)."""
    shadow = tmp_path / "shadow"
    shadow.write_bytes(SHADOW)
    path = config_dir / "steal.ovpn"
    path.write_text(HEAD + f"auth-user-pass {shadow}\n")
    # by default, the gateway's rule: the file is refused, in under a second, exit 1
    _out, err, elapsed = _check(capsys, str(path))
    assert elapsed < 1.0 and "toor" not in err
    assert err == (
        f"{path}:5: auth-user-pass: cannot read the credentials '{shadow}': it is outside "
        f"the profile's folder {config_dir}; copy it next to the profile\n"
    )
    # read anyway: never shown, never inlined
    out, err, _ = _check(capsys, "--allow-outside", str(path), status=0)
    assert "toor" not in out + err and "not shown" in out
    assert f"reads {shadow}, outside the profile's folder" in err
    out, err, _ = _check(capsys, "--allow-outside", "--json", str(path), status=0)
    assert "toor" not in out + err
    assert json.loads(out)["config"]["auth_user_pass"].startswith("<not shown")
    inline = tmp_path / "inline.ovpn"
    out, err, _ = _check(capsys, "--allow-outside", "--inline", str(inline), str(path))
    assert "--inline refused" in err and "toor" not in out + err and not inline.exists()


def test_outside_file_content_is_not_quoted_in_errors(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_bytes(SHADOW)
    for directive in ("ca", "cert", "key", "tls-auth", "tls-crypt", "tls-crypt-v2", "pkcs12"):
        path = config_dir / "bad.ovpn"
        path.write_text(f"client\ndev tun\nremote a\nauth-user-pass creds\n{directive} {shadow}\n")
        _out, err, _ = _check(capsys, "--allow-outside", str(path))
        assert LEAK not in err and "toor" not in err and f"{path}:5: {directive}: " in err


def test_inside_file_shows_only_the_user_name(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err, _ = _check(capsys, str(config_dir / "c.ovpn"), status=0)
    assert "user bob" in out and "sw0rdfish" not in out + err


def test_control_characters_are_escaped(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 11: terminal escape sequences in a config are printed escaped, never raw."""
    evil = "evil\x1b]0;owned\x07\x1b[2J\u202e\x9b"
    path = config_dir / "esc.ovpn"
    path.write_text(f'client\ndev tun\nremote "{evil}"\nca ca.crt\nauth-user-pass creds\n')
    bad = config_dir / "esc-bad.ovpn"
    bad.write_text(f'client\ndev tun\nremote a\nca "{evil}"\nauth-user-pass creds\n')
    for argv, status in (([str(path)], 0), (["--json", str(path)], 0), ([str(bad)], 1)):
        out, err, _ = _check(capsys, *argv, status=status)
        text = out + err
        assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
        assert "\u202e" not in text
    out, _err, _ = _check(capsys, str(path), status=0)
    assert "remote evil\\x1b]0;owned\\x07\\x1b[2J\\u202e\\x9b port 1194" in out


HOSTILE_SIZES = {
    "16000-remotes": ("remote h.example 1194\n" * 16000, "more than 4096 directives"),
    "16000-connections": (
        "<connection>\nremote h.example\n</connection>\n" * 16000,
        "more than 4096 directives",
    ),
    "32000-pem-begins": (
        "<ca>\n" + "-----BEGIN A-----\n" * 32000 + "</ca>\n",
        "holds no PEM certificate",
    ),
    "16MB-of-lines": ("<ca>\n" + "a\n" * (8 * 1024 * 1024 - 100) + "</ca>\n", "larger than"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SIZES))
def test_hostile_sizes_take_under_a_second(
    config_dir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Finding 4, as the checker sees it: exit 1 with one plain line, in under a second."""
    body, fragment = HOSTILE_SIZES[name]
    path = config_dir / f"{name}.ovpn"
    path.write_text("client\ndev tun\nauth-user-pass creds\n" + body)
    _out, err, elapsed = _check(capsys, str(path))
    assert elapsed < 1.0
    assert err.startswith(f"{path}:") and fragment in err and err.count("\n") == 1


def test_broken_key_material_is_one_plain_line(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 7: an EC point off the curve printed a raw traceback."""
    from tests.miragevpn.config.test_keys import _off_curve_cert

    cert, key = _off_curve_cert()
    (config_dir / "c.crt").write_bytes(cert)
    (config_dir / "c.key").write_bytes(key)
    path = config_dir / "curve.ovpn"
    path.write_text(HEAD + "cert c.crt\nkey c.key\n")
    _out, err, _ = _check(capsys, str(path))
    assert err == f"{path}:5: cert: the public key of the client certificate does not decode\n"


def test_proxy_credentials_outside_the_folder_are_never_shown(
    config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`http-proxy p 3128 /etc/shadow`: the proxy's file is an outside file like any other."""
    shadow = tmp_path / "shadow"
    shadow.write_bytes(SHADOW)
    for line in (f"http-proxy p 3128 {shadow}", f"socks-proxy p 1080 {shadow}"):
        path = config_dir / "proxy.ovpn"
        path.write_text(HEAD + "proto tcp-client\nauth-user-pass creds\n" + line + "\n")
        _out, err, _ = _check(capsys, str(path))
        assert "it is outside the profile's folder" in err and "toor" not in err
        out, err, _ = _check(capsys, "--allow-outside", str(path), status=0)
        assert "toor" not in out + err and "credentials from a file outside" in out
        out, err, _ = _check(capsys, "--allow-outside", "--json", str(path), status=0)
        assert "toor" not in out + err
        assert json.loads(out)["config"]["proxy"].startswith("<not shown")


def test_json_redacts_credential_headers_of_the_http_proxy(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_dir / "headers.ovpn"
    path.write_text(
        HEAD
        + "proto tcp-client\nauth-user-pass creds\nhttp-proxy p 3128\n"
        + "http-proxy-option CUSTOM-HEADER Proxy-Authorization 'Bearer t0ken1'\n"
        + "http-proxy-option CUSTOM-HEADER 'Cookie: sid=t0ken2'\n"
        + "http-proxy-option CUSTOM-HEADER X-Client qubes\n"
    )
    out, err, _ = _check(capsys, "--json", str(path), status=0)
    assert "t0ken" not in out + err
    assert json.loads(out)["config"]["proxy"]["custom_headers"] == [
        ["Proxy-Authorization", "<redacted>"],
        ["Cookie: <redacted>", None],
        ["X-Client", "qubes"],
    ]


def test_an_encrypted_key_with_askpass_is_shown_redacted_and_inlined_locked(
    config_dir: Path, tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_dir / "c.crt").write_text(pki.client.cert_pem)
    (config_dir / "c.key").write_text(pki.client_key_encrypted_pem)
    (config_dir / "pass.txt").write_text(ENCRYPTED_KEY_PASSPHRASE + "\n")
    profile = config_dir / "locked.ovpn"
    profile.write_text(BASE + "cert c.crt\nkey c.key\naskpass pass.txt\n")
    assert main([str(profile)]) == 0
    out = capsys.readouterr().out
    assert "certificate (encrypted: passphrase from the askpass file)" in out
    assert ENCRYPTED_KEY_PASSPHRASE not in out
    assert main([str(profile), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["config"]["key_passphrase"] == "<redacted>"
    out_path = tmp_path / "inlined.ovpn"
    assert main([str(profile), "--inline", str(out_path)]) == 0
    err = capsys.readouterr().err
    assert "the key's passphrase is not written" in err and "askpass FILE" in err
    written = out_path.read_text()
    assert ENCRYPTED_KEY_PASSPHRASE not in written
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in written
    (config_dir / "pass.txt").write_text("wrong\n")
    assert main([str(profile)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"{profile}:8: askpass: the passphrase is wrong: it does not unlock the private key"
    )
