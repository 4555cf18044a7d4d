"""Fixtures for runtime tests: namespaces from the shared helpers."""

from __future__ import annotations

from tests.helpers.netns import netns, netns_pair  # noqa: F401  (fixtures)
