"""Fixtures for the gateway tests: the real QubesDB daemons (built once per session, started
once per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.real_qubesdb import RealQubesDB


@pytest.fixture(scope="session")
def qubesdb_prefix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where the real QubesDB is built: pytest's cache (kept between runs) or a session temp."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("qubesdb-build"))
    return tmp_path_factory.mktemp("qdb")


@pytest.fixture(scope="module")
def real_qubesdb(
    qubesdb_prefix: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealQubesDB]:
    """The real daemons (vm mode) and binding; skipped with the reason when unavailable."""
    real = RealQubesDB.start(qubesdb_prefix, tmp_path_factory.mktemp("qdb-run"))
    try:
        yield real
    finally:
        real.stop()
    assert real.link_errors() == [], "a test broke the link between the VM and dom0 daemons"
