"""The library stack under test is the one `make test` says it is, and our ranges are true.

`make test` runs the suite twice (Makefile: test-system, test-newest) and tells each run which
stack it is in MIRAGEVPN_STACK:
- "system": Debian 12's Python 3.11 with Debian's packages. These are pyproject's floors, so
  the floors must be exactly the versions installed here (a floor nobody tests is a guess).
- "newest": the newest Python found with the newest releases from the package index, in a
  virtual environment that does not see Debian's packages.
Run by hand without MIRAGEVPN_STACK, only the stack-independent checks run.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.stack import describe

ROOT = Path(__file__).resolve().parent.parent
STACK = os.environ.get("MIRAGEVPN_STACK", "")


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        assert match, f"dependency {requirement!r} is not `name>=floor` (ceilings need a reason)"
        floors[match.group(1)] = match.group(2)
    return floors


def test_every_dependency_meets_its_floor() -> None:
    for name, floor in _floors().items():
        installed = importlib.metadata.version(name)
        assert _numbers(installed) >= _numbers(floor), f"{name} {installed} < {floor}"


def test_the_stack_description_names_every_version() -> None:
    text = "\n".join(describe())
    for name in _floors():
        assert f"{name} {importlib.metadata.version(name)}" in text
    assert "\naead backend: " in text


def test_the_nftables_binding_loads_libnftables() -> None:
    """The gateway's firewall binding (python3-nftables / pip-nftables) finds libnftables.so.1."""
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(True)
    assert nft.get_json_output()


def test_the_firewall_uses_the_binding_not_its_nft_fallback() -> None:
    """On both stacks the gateway talks to libnftables in-process; `nft -j` is only a fallback
    (tests/qubes_miragevpn/gateway/test_nft.py skips its binding check where it is missing)."""
    from qubes_miragevpn.gateway.nft import LibNftables, open_backend

    assert isinstance(open_backend(), LibNftables)


def test_the_decompression_bindings_load() -> None:
    """Both stacks have them (APT_PACKAGES / the `compression` extra): without them the
    compression tests would only see the dropping path."""
    from miragevpn import compression

    assert compression.HAVE_LZ4 and compression.HAVE_LZO
    line = next(x for x in describe() if x.startswith("compression: "))
    assert "not installed" not in line
    if STACK:
        origin = "(debian)" if STACK == "system" else "(venv)"
        assert line.count(origin) == 2, line


def test_pyroute2_is_a_test_dependency_only() -> None:
    """The programs speak netlink themselves (rtnl.py, nlmsg.py); pyroute2 is the tests'
    second opinion, on Debian's 0.7 on the system stack and the newest release on the other."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if r.lower().startswith("pyroute2")]
    assert "pyroute2>=0.7.2" in project["optional-dependencies"]["dev"]
    installed = importlib.metadata.version("pyroute2")
    if STACK == "system":
        assert _numbers(installed) == (0, 7, 2), installed
    elif STACK == "newest":
        assert _numbers(installed) >= (0, 9), installed


@pytest.mark.skipif(STACK != "system", reason="only on the Debian 12 stack (make test-system)")
def test_system_stack_is_debian_12_at_pyprojects_floors() -> None:
    assert sys.version_info[:2] == (3, 11)
    for name, floor in _floors().items():
        installed = importlib.metadata.version(name)
        assert _numbers(installed) == _numbers(floor), f"{name}: Debian has {installed}"
        module = {"pyOpenSSL": "OpenSSL", "PyYAML": "yaml"}.get(name, name)
        assert "dist-packages" in str(__import__(module).__file__), f"{name} not Debian's"


@pytest.mark.skipif(STACK != "newest", reason="only on the newest stack (make test-newest)")
def test_newest_stack_is_isolated_from_debians_packages() -> None:
    assert sys.prefix != sys.base_prefix, "not a virtual environment"
    assert not any("dist-packages" in entry for entry in sys.path), sys.path
    import nftables

    assert importlib.metadata.version("pip-nftables")
    assert Path(sys.prefix).resolve() in Path(str(nftables.__file__)).resolve().parents
