"""Fixtures for interop tests: the session PKI on disk and a server/client namespace pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.netns import netns, netns_pair  # noqa: F401  (fixtures)
from tests.helpers.pki import PkiFiles, make_pki, write_pki


@pytest.fixture(scope="session")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return write_pki(make_pki(), tmp_path_factory.mktemp("pki"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
