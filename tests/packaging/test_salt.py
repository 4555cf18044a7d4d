"""The Salt states in salt/, rendered by Salt's own renderer for sample pillars.

Salt comes from the package index into a virtual environment of its own (tests/packaging/
tools.py); `salt-call --local state.show_sls` renders each state file with Jinja and YAML as
qubesctl would and returns the compiled states, which are checked for the qvm.* states and
values a pillar asks for. The qvm state module itself exists only in dom0 (Qubes'
qubes-mgmt-salt-dom0-qvm): rendering checks what we ask it to do, not that dom0 does it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packaging.build import ROOT, SYSTEM_ENV, pytestmark_system_only
from tests.packaging.tools import ToolUnavailable, tool_venv

pytestmark = [pytest.mark.packaging, pytestmark_system_only, pytest.mark.timeout(900)]

SALT = ROOT / "salt"
EXAMPLE_PILLAR = SALT / "pillar" / "qubes-miragevpn.sls.example"
SALT_REQUIREMENT = "salt"

Render = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def salt_bin() -> Path:
    try:
        return tool_venv("salt", SALT_REQUIREMENT)
    except ToolUnavailable as e:
        pytest.skip(f"Salt could not be installed from the package index: states not rendered: {e}")


@pytest.fixture
def render(salt_bin: Path, tmp_path: Path) -> Render:
    """render(sls, pillar=None, minion="dom0") -> {state id: (function, {arg: value})}; the
    pillar is a mapping (None: the shipped example pillar)."""

    def call(sls: str, pillar: dict[str, Any] | None = None, *, minion: str = "dom0",
             function: str = "state.show_sls") -> dict[str, Any]:  # fmt: skip
        conf, pillar_root = tmp_path / "conf", tmp_path / "pillar"
        conf.mkdir(exist_ok=True)
        pillar_root.mkdir(exist_ok=True)
        data = yaml.safe_load(EXAMPLE_PILLAR.read_text()) if pillar is None else pillar
        (pillar_root / "qubes-miragevpn.sls").write_text(yaml.safe_dump(data))
        (pillar_root / "top.sls").write_text("base:\n  '*':\n    - qubes-miragevpn\n")
        (conf / "minion").write_text(yaml.safe_dump({
            "id": minion,
            "file_client": "local",
            "root_dir": str(tmp_path / "root"),
            "file_roots": {"user": [str(SALT)]},
            "pillar_roots": {"base": [str(pillar_root)]},
            "log_level_logfile": "quiet",
        }))  # fmt: skip
        done = subprocess.run(
            [str(salt_bin / "salt-call"), "--local", f"--config-dir={conf}", "--out=json",
             "--log-level=error", function, sls, "saltenv=user"],
            capture_output=True, text=True, env=SYSTEM_ENV, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)["local"]
        if function != "state.show_sls":
            return result  # type: ignore[no-any-return]
        assert isinstance(result, dict), result  # a list means render errors
        return {sid: compiled(body) for sid, body in result.items()}

    return call


def compiled(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Salt's high data of one state -> ("module.function", {argument: value})."""
    [module] = [k for k in body if not k.startswith("__")]
    function, args = "", {}
    for item in body[module]:
        if isinstance(item, str):
            function = item
        else:
            args.update(item)
    args.pop("order", None)  # Salt's own bookkeeping
    return f"{module}.{function}", args


def of(states: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return [args for f, args in states.values() if f == function]


# ------------------------------------------------------------------------------ dom0


def test_dom0_creates_sys_vpn_as_the_pillar_says(render: Render) -> None:
    states = render("qubes-miragevpn.sys-vpn")
    [present] = of(states, "qvm.present")
    assert present == {"name": "sys-vpn", "template": "debian-12-xfce", "label": "blue"}
    prefs = {a["name"]: a for a in of(states, "qvm.prefs")}
    vpn = prefs["sys-vpn"]
    assert vpn["netvm"] == "sys-firewall"
    assert vpn["provides-network"] is True
    assert vpn["memory"] == 400 and vpn["maxmem"] == 800
    assert vpn["autostart"] is True
    [service] = of(states, "qvm.service")
    assert service["name"] == "sys-vpn" and service["enable"] == ["qubes-miragevpn"]
    [features] = of(states, "qvm.features")
    assert features["enable"] == ["servicevm"]
    assert features["set"] == [
        {"vm-config.miragevpn-log-level": "info"},
        {"vm-config.miragevpn-names": "10.137.0.12=work 10.137.0.13=personal"},
        {"vm-config.miragevpn-profile": "provider.ovpn"},
    ]
    # the listed AppVMs use sys-vpn, once sys-vpn provides network
    for appvm in ("work", "personal"):
        assert prefs[appvm]["netvm"] == "sys-vpn"
        assert prefs[appvm]["require"] == [{"qvm": "sys-vpn-prefs"}]
    [policy] = of(states, "file.managed")
    assert policy["source"] == "salt://qubes-miragevpn/files/30-qubes-miragevpn.policy"
    assert "/etc/qubes/policy.d/30-qubes-miragevpn.policy" in states


def test_dom0_with_another_name_and_no_appvms_or_knobs(render: Render) -> None:
    pillar = {"qubes-miragevpn": {"name": "vpn-work", "netvm": "sys-net", "memory": 300,
                                  "template": "fedora-42-xfce", "autostart": False}}  # fmt: skip
    states = render("qubes-miragevpn.sys-vpn", pillar)
    [present] = of(states, "qvm.present")
    assert present["name"] == "vpn-work" and present["template"] == "fedora-42-xfce"
    [prefs] = of(states, "qvm.prefs")  # no AppVM touched
    assert (prefs["netvm"], prefs["memory"], prefs["autostart"]) == ("sys-net", 300, False)
    [features] = of(states, "qvm.features")
    assert "set" not in features  # no profile or log level chosen: the daemon's defaults
    [service] = of(states, "qvm.service")
    assert service["name"] == "vpn-work"


def test_qrexec_policy_allows_only_dom0() -> None:
    policy = (SALT / "qubes-miragevpn" / "files" / "30-qubes-miragevpn.policy").read_text()
    rules = [line.split() for line in policy.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["qubes.MirageVPNStatus", "*", "dom0", "@anyvm", "allow", "user=root"],
        ["qubes.MirageVPNStatus", "*", "@anyvm", "@anyvm", "deny"],
    ]
    service = (ROOT / "qubes-miragevpn" / "qubes-rpc" / "qubes.MirageVPNStatus").read_text()
    assert "exec /usr/bin/qubes-miragevpn status --json" in service


# ------------------------------------------------------------------------------ the qubes


def test_template_installs_the_package(render: Render) -> None:
    states = render("qubes-miragevpn.template", minion="debian-12-xfce")
    assert list(states.values()) == [("pkg.installed", {"refresh": True})]
    assert "qubes-miragevpn" in states


def test_vpn_qube_gets_profile_and_credentials_0600(render: Render) -> None:
    pillar = yaml.safe_load(EXAMPLE_PILLAR.read_text())
    states = render("qubes-miragevpn.config", minion="sys-vpn")
    folder = "/rw/config/qubes-miragevpn"
    assert states[folder] == ("file.directory", {"user": "root", "group": "root", "mode": "0700"})
    for name, text in pillar["qubes-miragevpn"]["files"].items():
        function, args = states[f"{folder}/{name}"]
        assert function == "file.managed"
        assert args["contents"] == text
        assert (args["user"], args["mode"], args["show_changes"]) == ("root", "0600", False)
    function, args = states[f"{folder}/settings.yaml"]
    assert function == "file.serialize" and args["mode"] == "0600"
    assert args["dataset"] == {"dns": ["9.9.9.9"]}
    assert states["qubes-miragevpn-reload"] == (
        "cmd.wait",
        {"name": "systemctl try-restart qubes-miragevpn.service"},
    )


def test_top_files_target_dom0_the_template_and_the_vpn_qube(render: Render) -> None:
    def top(name: str) -> dict[str, Any]:
        text = render(f"salt://qubes-miragevpn/{name}.top", function="slsutil.renderer")
        return text

    assert top("sys-vpn") == {"user": {"dom0": [{"match": "nodegroup"}, "qubes-miragevpn.sys-vpn"]}}
    assert top("template") == {"user": {"debian-12-xfce": ["qubes-miragevpn.template"]}}
    assert top("config") == {"user": {"sys-vpn": ["qubes-miragevpn.config"]}}


def test_formula_names_its_files() -> None:
    formula = yaml.safe_load((SALT / "FORMULA").read_text())
    assert formula["name"] == "qubes-miragevpn"
    assert formula["version"] == (ROOT / "version").read_text().strip()
    for path in (*formula["formula-files"], *formula["pillar-files"]):
        assert (SALT / path).exists(), path
