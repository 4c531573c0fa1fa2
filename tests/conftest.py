"""Shared fixtures: one Azurite per test session on free ports, and per-test isolation by unique names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devkit.azurite import Azurite, AzuriteEndpoints


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteEndpoints]:
    with Azurite() as endpoints:
        yield endpoints


@pytest.fixture
def storage_connection_string(azurite: AzuriteEndpoints) -> str:
    return azurite.connection_string


@pytest.fixture
def unique_prefix() -> str:
    """A table-name prefix (and queue-name stem) unique to one test: tests never see each other's state."""
    return "t" + uuid.uuid4().hex[:12]
