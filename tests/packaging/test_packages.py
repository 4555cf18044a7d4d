"""`make deb` and `make rpm`: what the packages contain, depend on and run, and their linters.

Each package is built once (module fixtures), by the Makefile targets a packager uses. The
Debian package must depend on Debian's own python3-* packages and nftables, with the Qubes
packages only recommended (it also installs outside Qubes, for the tests); the rpm requires
Fedora's python3-* packages and python3-qubesdb, in the Qubes style. lintian and rpmlint
(rpmlint from the package index, in a throwaway virtual environment) report no errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.packaging.build import DSC, ROOT, SPEC, SRPM, pytestmark_system_only, run
from tests.packaging.tools import tool_venv

pytestmark = [pytest.mark.packaging, pytestmark_system_only, pytest.mark.timeout(900)]

UNITS = ("qubes-miragevpn-block.service", "qubes-miragevpn.service")
SCRIPTS = ("qubes-miragevpn", "miragevpn-client", "miragevpn-config-check")


def deb_field(deb: Path, name: str) -> str:
    done = run(["dpkg-deb", "--field", str(deb), name])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def relations(value: str) -> dict[str, str]:
    """'a (>= 1), b' -> {'a': '>= 1', 'b': ''}."""
    out = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        m = re.fullmatch(r"([a-z0-9.+:-]+)(?:\s*\((.*)\))?", part)
        assert m, part
        out[m[1]] = m[2] or ""
    return out


def deb_files(deb: Path) -> set[str]:
    done = run(["dpkg-deb", "--contents", str(deb)])
    assert done.returncode == 0, done.stderr
    return {line.split()[-1].removeprefix(".") for line in done.stdout.splitlines()}


# ------------------------------------------------------------------------------ Debian


def test_deb_depends_on_debians_own_packages_and_only_recommends_qubes(deb: Path) -> None:
    depends = relations(deb_field(deb, "Depends"))
    for package in ("python3-cryptography", "python3-openssl", "python3-yaml",
                    "python3-nftables", "nftables"):  # fmt: skip
        assert package in depends, (package, depends)
    assert "python3-pyroute2" not in depends  # our own netlink code (rtnl.py); tests only
    # the floors of pyproject.toml: the versions Debian 12 ships
    assert depends["python3-cryptography"] == ">= 38.0.4"
    recommends = relations(deb_field(deb, "Recommends"))
    assert {"python3-qubesdb", "qubes-core-agent-networking"} <= recommends.keys()
    assert {"python3-lz4", "python3-lzo"} <= recommends.keys()  # decompression (optional)
    assert not {"python3-qubesdb", "qubes-core-agent-networking"} & depends.keys()
    assert deb_field(deb, "Architecture") == "all"
    assert deb_field(deb, "Version") == (ROOT / "version").read_text().strip()


def test_deb_installs_program_units_hooks_and_docs_where_debian_looks(deb: Path) -> None:
    files = deb_files(deb)
    expected = {
        *(f"/usr/bin/{s}" for s in SCRIPTS),
        *(f"/lib/systemd/system/{u}" for u in UNITS),
        "/lib/systemd/system-preset/75-qubes-miragevpn.preset",
        "/etc/qubes/post-install.d/30-qubes-miragevpn.sh",
        "/etc/qubes-rpc/qubes.MirageVPNStatus",
        "/usr/lib/python3/dist-packages/qubes_miragevpn/gateway/cli.py",
        "/usr/lib/python3/dist-packages/miragevpn/client.py",
        "/usr/share/doc/qubes-miragevpn/README.md",  # the units' Documentation=, uncompressed
        "/usr/share/doc/qubes-miragevpn/security.md",
        "/usr/share/doc/qubes-miragevpn/examples/settings.yaml",
        "/usr/share/doc/qubes-miragevpn/copyright",
    }
    assert expected <= files, sorted(expected - files)
    # nothing of the development tree
    assert not [f for f in files if "/tests/" in f or ".venv" in f or f.endswith(".pyc")]
    # the console scripts run the system python3 (dh_python3), not a virtual environment's
    done = run(
        ["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - ./usr/bin/qubes-miragevpn"]
    )
    assert done.stdout.startswith("#!/usr/bin/python3\n"), done.stdout[:80]


def test_deb_maintainer_scripts_enable_the_units_advertise_and_clean_up(
    deb: Path, tmp_path: Path
) -> None:
    assert run(["dpkg-deb", "--control", str(deb), str(tmp_path)]).returncode == 0
    postinst = (tmp_path / "postinst").read_text()
    for unit in UNITS:
        assert f"deb-systemd-helper enable '{unit}'" in postinst
    assert "/etc/qubes/post-install.d/30-qubes-miragevpn.sh" in postinst
    assert "qvm-features-request" in postinst
    # the boot-time kill switch is never started (nor restarted) by the package
    assert "deb-systemd-invoke $_dh_action 'qubes-miragevpn-block.service'" not in postinst
    prerm = (tmp_path / "prerm").read_text()
    assert "PYTHONDONTWRITEBYTECODE=1 /usr/bin/qubes-miragevpn unblock" in prerm
    postrm = (tmp_path / "postrm").read_text()
    assert "nft delete table inet qubes-miragevpn" in postrm
    assert "deb-systemd-helper purge" in postrm
    for script in ("postinst", "prerm", "postrm"):
        assert run(["sh", "-n", str(tmp_path / script)]).returncode == 0, script


def test_deb_source_package_builds_and_lintian_reports_no_errors(deb: Path) -> None:
    assert DSC.exists()
    done = run(["lintian", "--fail-on", "error", str(deb), str(DSC)], timeout=300)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    print("\n[lintian]\n" + done.stdout)
    assert errors == [], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ Fedora


def rpm_query(package: Path, *query: str) -> str:
    done = run(["rpm", "-qp", *query, str(package)])
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rpm_requires_fedoras_python_packages_and_qubesdb(rpm: Path) -> None:
    requires = {line.split()[0] for line in rpm_query(rpm, "--requires").splitlines()}
    for package in ("python3-cryptography", "python3-pyOpenSSL",
                    "python3-pyyaml", "python3-nftables", "python3-qubesdb", "nftables",
                    "qubes-core-agent-networking"):  # fmt: skip
        assert package in requires, (package, sorted(requires))
    assert "python3-pyroute2" not in requires  # our own netlink code (rtnl.py); tests only
    recommends = {line.split()[0] for line in rpm_query(rpm, "--recommends").splitlines()}
    assert {"python3-lz4", "python3-lzo"} <= recommends, sorted(recommends)
    assert rpm_query(rpm, "--queryformat", "%{VERSION} %{ARCH} %{LICENSE}") == (
        f"{(ROOT / 'version').read_text().strip()} noarch BSD-2-Clause"
    )


def test_rpm_files_and_systemd_scriptlets(rpm: Path) -> None:
    files = set(rpm_query(rpm, "--list").splitlines())
    expected = {
        *(f"/usr/bin/{s}" for s in SCRIPTS),
        *(f"/usr/lib/systemd/system/{u}" for u in UNITS),
        "/usr/lib/systemd/system-preset/75-qubes-miragevpn.preset",
        "/etc/qubes/post-install.d/30-qubes-miragevpn.sh",
        "/etc/qubes-rpc/qubes.MirageVPNStatus",
        "/usr/share/doc/qubes-miragevpn/README.md",
    }
    assert expected <= files, sorted(expected - files)
    assert any(f.endswith("/site-packages/qubes_miragevpn/gateway/cli.py") for f in files)
    scripts = rpm_query(rpm, "--scripts")
    # %systemd_post applies the preset on first install; %preun disables on removal
    assert re.search(r"preset .*qubes-miragevpn-block\.service", scripts), scripts
    assert re.search(r"disable --now .*qubes-miragevpn\.service", scripts), scripts
    assert "qubes-miragevpn unblock" in scripts
    preset = (ROOT / "qubes-miragevpn" / "systemd" / "75-qubes-miragevpn.preset").read_text()
    assert {f"enable {u}" for u in UNITS} <= set(preset.splitlines())


def test_rpm_spec_is_qubes_style() -> None:
    spec = (ROOT / "rpm_spec" / "qubes-miragevpn.spec.in").read_text()
    assert re.search(r"^Version:\s+@VERSION@$", spec, re.M)
    assert "@CHANGELOG@" in spec
    for macro in ("%systemd_post", "%systemd_preun", "%systemd_postun_with_restart"):
        assert macro in spec
    assert "make install DESTDIR=%{buildroot}" in spec


def test_rpmlint_reports_no_errors(rpm: Path) -> None:
    rpmlint = tool_venv("rpmlint", "rpmlint", system_site=True) / "rpmlint"
    done = run([str(rpmlint), "--config", str(ROOT / "rpm_spec" / "rpmlint.toml"),
                str(rpm), str(SRPM), str(SPEC)], timeout=300)  # fmt: skip
    print("\n[rpmlint]\n" + done.stdout)
    summary = re.search(r"(\d+) errors, (\d+) warnings", done.stdout)
    assert summary, done.stdout + done.stderr
    assert summary[1] == "0", done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_version_everywhere() -> None:
    version = (ROOT / "version").read_text().strip()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{version}"\n' in pyproject
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"qubes-miragevpn ({version}) ")
