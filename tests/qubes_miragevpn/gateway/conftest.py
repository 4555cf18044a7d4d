"""Fixtures for the gateway tests: the real QubesDB daemons (one start per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.real_qubesdb import RealQubesDB


@pytest.fixture(scope="module")
def real_qubesdb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealQubesDB]:
    """The real daemons (vm mode) and binding; skipped with the reason when unavailable."""
    cache = getattr(request.config, "cache", None)
    prefix = (
        Path(cache.mkdir("qubesdb-build")) if cache is not None else tmp_path_factory.mktemp("qdb")
    )
    real = RealQubesDB.start(prefix, tmp_path_factory.mktemp("qdb-run"))
    try:
        yield real
    finally:
        real.stop()
