"""The packages, built once per run by the Makefile's own targets (session fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.build import DEB, RPM, make


@pytest.fixture(scope="session")
def deb() -> Path:
    make("deb")
    return DEB


@pytest.fixture(scope="session")
def rpm() -> Path:
    make("rpm")
    return RPM
