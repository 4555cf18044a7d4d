"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest

from tests.helpers.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A throwaway PKI (CA, server, client), made once per test module."""
    return make_pki()
