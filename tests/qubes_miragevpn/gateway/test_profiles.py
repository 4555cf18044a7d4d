"""Profiles: which .ovpn, its side files (confined to the folder), credentials (0600)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from miragevpn.config.model import AuthUserPass, Secret
from miragevpn.errors import ConfigError
from qubes_miragevpn.gateway.profiles import (
    LoadedProfile,
    ProfileBlocked,
    choose_profile,
    load_profile,
    profile_loader,
)
from tests.helpers.pki import Identity, make_ca, make_leaf, static_key_text

PROFILE = """client
dev tun
proto udp
remote 192.0.2.1 1194
ca ca.crt
cert client.crt
key client.key
tls-crypt ta.key
auth-user-pass auth.txt
verb 3
"""


def folder_reader(folder: Path) -> Callable[[str], bytes]:
    """Stands in for qubes_miragevpn.files.ProfileFiles(..., confine=True) in these tests."""
    root = folder.resolve()

    def read(name: str) -> bytes:
        path = (folder / name).resolve()
        if root not in path.parents:
            raise ConfigError(f"is outside the profile's folder {root}")
        return path.read_bytes()

    return read


@pytest.fixture(scope="module")
def identities() -> tuple[Identity, Identity]:
    ca = make_ca("profiles-test-ca")
    return ca, make_leaf(ca, "client", server=False)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def folder(tmp_path: Path, identities: tuple[Identity, Identity]) -> Path:
    ca, client = identities
    folder = tmp_path / "qubes-miragevpn"
    folder.mkdir()
    write(folder / "ca.crt", ca.cert_pem, 0o644)
    write(folder / "client.crt", client.cert_pem, 0o644)
    write(folder / "client.key", client.key_pem)
    write(folder / "ta.key", static_key_text(bytes(range(256))))
    write(folder / "auth.txt", "alice\ns3cret\n")
    write(folder / "settings.yaml", "log_level: info\n", 0o644)
    write(folder / "work.ovpn", PROFILE, 0o644)
    return folder


Load = Callable[..., LoadedProfile | ProfileBlocked]
Blocked = Callable[..., str]


@pytest.fixture(params=["files.ProfileFiles", "test reader"])
def load(request: pytest.FixtureRequest) -> Load:
    """load_profile with its default reader (files.ProfileFiles, confined) or the test's own."""

    def load(folder: Path, selection: str | None = None) -> LoadedProfile | ProfileBlocked:
        if request.param == "test reader":
            return load_profile(folder, selection, read_file=folder_reader(folder))
        return load_profile(folder, selection)

    return load


@pytest.fixture
def blocked(load: Load) -> Blocked:
    def blocked(folder: Path, selection: str | None = None) -> str:
        result = load(folder, selection)
        assert isinstance(result, ProfileBlocked), result
        return result.reason

    return blocked


def test_the_one_profile_in_the_folder(folder: Path, load: Load) -> None:
    result = load(folder)
    assert isinstance(result, LoadedProfile), result
    assert result.name == "work.ovpn" and result.path == folder / "work.ovpn"
    assert result.config.remotes[0].host == "192.0.2.1"
    assert result.credentials == AuthUserPass("alice", Secret(b"s3cret"))
    assert any(f"{folder}/work.ovpn:10: verb" in note for note in result.notes)


def test_no_folder_no_profile_several_profiles(
    folder: Path, tmp_path: Path, blocked: Blocked
) -> None:
    assert "does not exist" in blocked(tmp_path / "absent")
    (folder / "work.ovpn").unlink()
    (folder / ".hidden.ovpn").write_text(PROFILE)
    (folder / "dir.ovpn").mkdir()
    assert blocked(folder).startswith(f"no profile in {folder}")
    write(folder / "home.conf", PROFILE)
    write(folder / "work.OVPN", PROFILE)
    reason = blocked(folder)
    assert "2 profiles" in reason and "home.conf, work.OVPN" in reason
    assert "vm-config.miragevpn-profile" in reason


def test_selection(folder: Path, load: Load, blocked: Blocked) -> None:
    write(folder / "home.ovpn", PROFILE.replace("192.0.2.1", "192.0.2.2"))
    assert choose_profile(folder, "home") == "home.ovpn"
    assert choose_profile(folder, "work.ovpn") == "work.ovpn"
    result = load(folder, "home")
    assert isinstance(result, LoadedProfile) and result.config.remotes[0].host == "192.0.2.2"
    assert "profiles there: home.ovpn, work.ovpn" in blocked(folder, "office")
    assert "not a profile" in blocked(folder, "settings.yaml")
    assert "without '/'" in blocked(folder, "../work.ovpn")
    assert choose_profile(folder, "") == choose_profile(folder, None)  # '' = not set
    assert isinstance(choose_profile(folder, None), ProfileBlocked)  # two now


def test_loader_follows_the_current_selection(folder: Path) -> None:
    write(folder / "home.ovpn", PROFILE)
    current: dict[str, str | None] = {"selection": None}
    loader = profile_loader(folder, lambda: current["selection"], read_file=folder_reader(folder))
    assert isinstance(loader(), ProfileBlocked)
    current["selection"] = "home.ovpn"
    first = loader()
    assert isinstance(first, LoadedProfile) and first.name == "home.ovpn"


@pytest.mark.parametrize("name", ["auth.txt", "client.key", "ta.key"])
def test_secrets_readable_by_others_block(
    folder: Path, name: str, load: Load, blocked: Blocked
) -> None:
    (folder / name).chmod(0o640)
    reason = blocked(folder)
    assert f"{folder / name} is readable by other users (mode 0640)" in reason
    assert reason.endswith(f"run chmod 600 {folder / name}")
    (folder / name).chmod(0o400)  # stricter is fine
    assert isinstance(load(folder), LoadedProfile)


def test_inline_secrets_make_the_profile_a_secret(
    folder: Path, load: Load, blocked: Blocked
) -> None:
    key = (folder / "client.key").read_text()
    text = PROFILE.replace("key client.key\n", f"<key>\n{key}</key>\n")
    write(folder / "work.ovpn", text, 0o644)
    reason = blocked(folder)
    assert "the profile (it holds secrets inline)" in reason
    (folder / "work.ovpn").chmod(0o600)
    assert isinstance(load(folder), LoadedProfile)


def test_credentials_the_gateway_cannot_ask_for(folder: Path, blocked: Blocked) -> None:
    write(folder / "work.ovpn", PROFILE.replace("auth-user-pass auth.txt", "auth-user-pass"))
    assert "needs a username and password" in blocked(folder)
    write(folder / "work.ovpn", PROFILE)
    write(folder / "auth.txt", "alice\n")
    assert "needs a password" in blocked(folder)


def test_profile_errors_name_file_and_line(folder: Path, blocked: Blocked) -> None:
    write(folder / "work.ovpn", PROFILE.replace("proto udp", "proto carrier-pigeon"))
    reason = blocked(folder)
    assert f"{folder}/work.ovpn:3" in reason and "proto" in reason
    (folder / "client.crt").unlink()
    write(folder / "work.ovpn", PROFILE)
    assert "cannot read" in blocked(folder) and "client.crt" in blocked(folder)


def test_profile_text_in_reasons_and_notes_is_escaped(folder: Path, load: Load) -> None:
    write(folder / "work.ovpn", PROFILE.replace("proto udp", "proto \x1b]0;x\x07udp"))
    reason = load(folder)
    assert isinstance(reason, ProfileBlocked)
    assert "\x1b" not in reason.reason and "\\x1b]0;x\\x07udp" in reason.reason, reason
    write(folder / "work.ovpn", PROFILE + "setenv opt \x1b[2Jwhatever 1\n")
    result = load(folder)
    assert isinstance(result, LoadedProfile), result
    assert not any("\x1b" in note for note in result.notes), result.notes
    assert any("\\x1b[2Jwhatever" in note for note in result.notes), result.notes


def test_side_files_stay_in_the_folder(folder: Path, tmp_path: Path, blocked: Blocked) -> None:
    outside = write(tmp_path / "elsewhere.crt", (folder / "ca.crt").read_text())
    write(folder / "work.ovpn", PROFILE.replace("ca ca.crt", f"ca {outside}"))
    assert "outside the profile's folder" in blocked(folder)
    write(folder / "work.ovpn", PROFILE.replace("ca ca.crt", "ca ../elsewhere.crt"))
    assert "the profile's folder" in blocked(folder)
    (folder / "link.crt").symlink_to(outside)
    write(folder / "work.ovpn", PROFILE.replace("ca ca.crt", "ca link.crt"))
    assert "outside the profile's folder" in blocked(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read a file of mode 0000")
def test_mode_check_uses_the_file_itself(folder: Path, load: Load) -> None:
    (folder / "auth.txt").chmod(0o000)  # root still reads it; nobody else can
    assert isinstance(load(folder), LoadedProfile)


# ---------------------------------------------------------------- encrypted keys (issue 11)

PASSPHRASE = "the gateway's passphrase"


def _encrypted(folder: Path, identities: tuple[Identity, Identity]) -> None:
    """client.key becomes encrypted (PKCS#8, PASSPHRASE); the profile names it."""
    key = identities[1].key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    write(folder / "client.key", key.decode())


def test_encrypted_key_with_askpass_in_the_folder(
    folder: Path, identities: tuple[Identity, Identity], load: Load
) -> None:
    _encrypted(folder, identities)
    write(folder / "pass.txt", PASSPHRASE + "\n")
    write(folder / "work.ovpn", PROFILE + "askpass pass.txt\n", 0o644)
    result = load(folder)
    assert isinstance(result, LoadedProfile), result
    assert result.config.key_passphrase == Secret(PASSPHRASE.encode())


def test_encrypted_key_without_askpass_blocks_and_says_why(
    folder: Path, identities: tuple[Identity, Identity], blocked: Blocked
) -> None:
    _encrypted(folder, identities)
    reason = blocked(folder)
    assert reason == (
        f"{folder}/work.ovpn: the private key is encrypted, and the gateway cannot ask for its "
        "passphrase: put the passphrase on the first line of a file next to the profile, chmod "
        "600 it, and add to the profile: askpass FILE"
    )
    write(folder / "work.ovpn", PROFILE + "askpass\n", 0o644)  # "ask on the console"
    assert "the gateway cannot ask for its passphrase" in blocked(folder)


def test_askpass_file_must_be_right_private_and_inside(
    folder: Path, tmp_path: Path, identities: tuple[Identity, Identity], blocked: Blocked
) -> None:
    _encrypted(folder, identities)
    write(folder / "pass.txt", "not it\n")
    write(folder / "work.ovpn", PROFILE + "askpass pass.txt\n", 0o644)
    reason = blocked(folder)
    assert reason.startswith(f"the profile cannot be used: {folder}/work.ovpn:11:1: askpass: ")
    assert reason.endswith("the passphrase is wrong: it does not unlock the private key")
    write(folder / "pass.txt", PASSPHRASE + "\n", 0o644)
    assert f"the askpass file {folder}/pass.txt is readable by other users" in blocked(folder)
    write(tmp_path / "outside.txt", PASSPHRASE + "\n")
    write(folder / "work.ovpn", PROFILE + f"askpass {tmp_path}/outside.txt\n", 0o644)
    assert "outside the profile's folder" in blocked(folder)
