"""Every corpus config gets the expected verdict and line, from the parser and from the CLI;
the netns test compares each with what the real OpenVPN 2.6 does with the same file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from miragevpn.config import format_config, parse_config
from miragevpn.errors import ConfigError
from qubes_miragevpn.configcheck import check_file, main
from tests.configs.corpus_support import CORPUS, materialise, openvpn_verdict
from tests.configs.manifest import CASES
from tests.helpers.pki import Pki, make_pki

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config-policy.md"


def test_corpus_is_complete() -> None:
    on_disk = {p.stem for p in CORPUS.glob("*.ovpn")}
    assert on_disk == set(CASES)
    assert len(CASES) >= 30


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.mark.parametrize("name", sorted(CASES))
def test_verdict(name: str, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    path = materialise(name, pki, tmp_path)
    if case.ours == "usable":
        config = check_file(str(path)).config
        assert main([str(path)]) == 0
        assert capsys.readouterr().out.startswith(f"{path}: usable")
        # the self-contained form is equivalent
        assert parse_config(format_config(config), read_file=_no_files) == config
    else:
        with pytest.raises(ConfigError) as info:
            check_file(str(path))
        assert info.value.line == case.line
        assert case.fragment in str(info.value)
        assert main([str(path)]) == 1
        assert f"{path}:{case.line}: " in capsys.readouterr().err


def _no_files(path: str) -> bytes:
    raise AssertionError(f"a formatted config must be self-contained, asked for {path}")


def test_every_difference_is_a_documented_policy() -> None:
    text = DOCS.read_text()
    for name, case in CASES.items():
        if case.ours != case.openvpn:
            assert case.policy, f"{name}: differs from OpenVPN without a policy"
            assert case.policy in text, f"{name}: policy '{case.policy}' not in {DOCS.name}"


@pytest.mark.netns
def test_openvpn_gives_the_recorded_verdict(pki: Pki, tmp_path: Path) -> None:
    def run(name: str) -> tuple[str, str, str]:
        directory = tmp_path / name
        directory.mkdir()
        verdict, log = openvpn_verdict(materialise(name, pki, directory))
        return name, verdict, log

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, sorted(CASES)))
    wrong = [
        f"{name}: openvpn {verdict}, manifest {CASES[name].openvpn}\n{log[-600:]}"
        for name, verdict, log in results
        if verdict != CASES[name].openvpn
    ]
    assert wrong == []
