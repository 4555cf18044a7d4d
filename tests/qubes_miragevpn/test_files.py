"""The safe reader of files a profile names (issue 8, findings 5 and 6): regular files only,
never blocking, size-capped; confinement to the profile's folder for the gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from miragevpn.errors import ConfigError
from qubes_miragevpn.files import MAX_FILE_BYTES, ProfileFiles, read_profile, read_regular


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(b"ca")
    (folder / "sub").mkdir()
    (folder / "sub" / "key").write_bytes(b"key")
    path = folder / "vpn.ovpn"
    path.write_text("client\n")
    return path


def _refused(read: ProfileFiles, name: str, fragment: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        read(name)
    assert time.monotonic() - start < 1.0
    assert fragment in info.value.message


def test_reads_relative_to_the_profile(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    read = ProfileFiles(str(profile))
    assert read("ca.crt") == b"ca"
    assert read("sub/key") == b"key"
    assert read(str(profile.parent / "ca.crt")) == b"ca"
    assert read.outside == []


def test_fifo_is_refused_without_blocking(profile: Path) -> None:
    os.mkfifo(profile.parent / "fifo")
    _refused(ProfileFiles(str(profile)), "fifo", "FIFO")


def test_directory_and_devices_are_refused(profile: Path) -> None:
    read = ProfileFiles(str(profile))
    _refused(read, "sub", "directory")
    _refused(read, "/dev/null", "/dev pseudo-filesystem")
    (profile.parent / "null").symlink_to("/dev/null")
    _refused(read, "null", "/dev pseudo-filesystem")


@pytest.mark.parametrize("name", ["/dev/stdin", "/proc/self/fd/0", "/proc/kmsg", "stdin"])
def test_standard_input_and_kernel_files_are_refused(profile: Path, name: str) -> None:
    """With a pipe on standard input that never ends, as in `sleep 30 | checker`."""
    code = (
        "import sys\n"
        "from qubes_miragevpn.files import ProfileFiles\n"
        "from miragevpn.errors import ConfigError\n"
        f"try:\n    ProfileFiles({str(profile)!r})({name!r})\n"
        "except ConfigError as exc:\n    print('refused:', exc.message)\n"
    )
    r, w = os.pipe()  # we hold the write end open: standard input never ends
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], stdin=r, capture_output=True, text=True, timeout=20
        )
    finally:
        os.close(r)
        os.close(w)
    out = done.stdout
    assert out.startswith("refused:"), out


def test_size_cap(profile: Path) -> None:
    big = profile.parent / "big"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    _refused(ProfileFiles(str(profile)), "big", "larger than")
    assert len(read_regular(str(big), max_bytes=MAX_FILE_BYTES + 1)[0]) == MAX_FILE_BYTES + 1
    with pytest.raises(ConfigError) as info:
        read_profile(str(big), max_bytes=10)
    assert info.value.file == str(big)


def test_missing_file_is_an_os_error(profile: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ProfileFiles(str(profile))("nope")
    with pytest.raises(ConfigError, match="cannot read"):
        read_profile(str(profile.parent / "nope.ovpn"))


def test_outside_files_are_read_and_listed(profile: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:*:20228:0:99999:7:::\n")
    read = ProfileFiles(str(profile))
    assert read(str(secret)) == secret.read_bytes()
    assert read("../shadow") == secret.read_bytes()
    assert read.outside == [str(secret), "../shadow"]


def test_confinement(profile: Path, tmp_path: Path) -> None:
    """The gateway's mode: nothing outside the profile's folder, whatever the spelling."""
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:*:20228:0:99999:7:::\n")
    (profile.parent / "link").symlink_to(secret)
    read = ProfileFiles(str(profile), confine=True)
    _refused(read, str(secret), "outside the profile's folder")
    _refused(read, "../shadow", "'..' is not allowed")
    _refused(read, "sub/../../shadow", "'..' is not allowed")
    _refused(read, "link", "outside the profile's folder")
    _refused(read, "/etc/shadow", "outside the profile's folder")
    assert read("ca.crt") == b"ca"
    assert read(str(profile.parent / "sub" / "key")) == b"key"
    assert read.outside == []


def test_unix_client_warns_about_outside_files(
    profile: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from qubes_miragevpn.cli import load_config
    from tests.helpers.pki import make_pki

    outside = tmp_path / "outside-ca.crt"
    outside.write_text(make_pki().ca.cert_pem)
    profile.write_text(f"client\ndev tun\nremote a\nca {outside}\nauth-user-pass\n")
    with caplog.at_level("WARNING"):
        config = load_config(profile)
    assert config.ca is not None
    assert f"reads '{outside}', outside the config's folder" in caplog.text
