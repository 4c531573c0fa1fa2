"""Shared fixtures: one Azurite per test session on free ports, and per-test isolation by unique names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devkit.azurite import Azurite, AzuriteEndpoints

if TYPE_CHECKING:
    from devkit.host_process import HostLauncher


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


# The local Functions host (devkit/host.py), one process per host. A host gets only these variables from the
# test process's environment (its settings come from its settings file), so a developer's shell cannot change
# what a test sees.
_HOST_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


@pytest.fixture(scope="session")
def local_hosts(
    azurite: AzuriteEndpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostLauncher]:
    """Starts local hosts against the session's Azurite; every host still running stops at session end.

    ``local_hosts.start(app_path, {"SETTING": "value"})`` returns a ready ``HostProcess`` with ``base_url``,
    ``function_key``, ``master_key``, ``url(path)``, ``fire(function_name)``, ``status()``, ``stop()`` and
    ``log_text()``. Use it for hosts shared by a module; use ``local_host`` for a host per test.
    """
    from devkit.host_process import HostLauncher  # imported here: only host tests pay for azure.functions

    launcher = HostLauncher(
        work_root=tmp_path_factory.mktemp("local-hosts"),
        base_settings={"AzureWebJobsStorage": azurite.connection_string},
        env={name: os.environ[name] for name in _HOST_ENV_PASSTHROUGH if name in os.environ},
    )
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def local_host(local_hosts: HostLauncher, tmp_path: Path) -> Iterator[HostLauncher]:
    """Like ``local_hosts``, but the hosts a test starts are stopped when the test ends."""
    from devkit.host_process import HostLauncher

    launcher = HostLauncher(work_root=tmp_path, base_settings=local_hosts.base_settings, env=local_hosts.env)
    try:
        yield launcher
    finally:
        launcher.stop_all()
