"""`make install DESTDIR=... PREFIX=/usr` lays out a template's files; `make uninstall` with the
same variables removes exactly them (only the empty system folders stay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.build import ROOT, pytestmark_system_only, run

pytestmark = [pytest.mark.packaging, pytestmark_system_only]


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_make_install_then_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    make = ["make", "--no-print-directory", f"DESTDIR={dest}", "PREFIX=/usr"]
    done = run([*make, "install"])
    assert done.returncode == 0, done.stdout + done.stderr
    files = files_under(dest)
    expected = {
        "/usr/bin/qubes-miragevpn",
        "/usr/bin/miragevpn-client",
        "/usr/bin/miragevpn-config-check",
        "/usr/lib/systemd/system/qubes-miragevpn.service",
        "/usr/lib/systemd/system/qubes-miragevpn-block.service",
        "/usr/lib/systemd/system-preset/75-qubes-miragevpn.preset",
        "/etc/qubes/post-install.d/30-qubes-miragevpn.sh",
        "/etc/qubes-rpc/qubes.MirageVPNStatus",
        "/usr/share/doc/qubes-miragevpn/README.md",
        "/usr/share/doc/qubes-miragevpn/examples/settings.yaml",
        # Debian's own scheme for /usr, not /usr/local
        "/usr/lib/python3/dist-packages/qubes_miragevpn/gateway/cli.py",
        "/usr/lib/python3/dist-packages/qubes_miragevpn-"
        f"{(ROOT / 'version').read_text().strip()}.dist-info/RECORD",
    }
    assert expected <= files, sorted(expected - files)
    assert not [f for f in files if f.endswith(".pyc") or "/local/" in f]
    assert (dest / "usr/bin/qubes-miragevpn").read_text().startswith("#!/usr/bin/python3\n")
    assert (dest / "etc/qubes-rpc/qubes.MirageVPNStatus").stat().st_mode & 0o777 == 0o755

    done = run([*make, "uninstall"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert files_under(dest) == set()
