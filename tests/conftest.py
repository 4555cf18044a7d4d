"""Suite-wide pytest configuration."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which library stack this run tests (make test runs two): exact versions, chosen paths."""
    from tests.helpers.stack import describe

    return describe()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Namespace and interop tests need root; say so plainly instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, tun, nftables)")
    for item in items:
        if "interop" in item.keywords or "netns" in item.keywords:
            item.add_marker(skip)
