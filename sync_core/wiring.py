"""Builds the real adapters once per worker process, lazily, on the first invocation that needs them.

Nothing here runs at import time except reading settings (``check_settings``), so a misconfigured app fails
at start naming the setting, while storage, Graph and the CRM are first touched by the first invocation. The
container is process-wide and thread-safe: the Functions worker runs invocations on a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property

from sync_core.adapters.queues import StorageQueues
from sync_core.adapters.tables import TableStorage
from sync_core.config import Settings

_HEALTH_PROBE_USER = "__health_probe__"


class Container:
    """The adapters of one worker. Built by ``container()``; tests build their own with explicit settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready_lock = threading.Lock()
        self._tables_ready = False

    @cached_property
    def tables(self) -> TableStorage:
        return TableStorage(self.settings.storage)

    @cached_property
    def queues(self) -> StorageQueues:
        return StorageQueues(self.settings.storage)

    def ready_tables(self) -> TableStorage:
        """The table stores, with every table created on first use in this worker."""
        with self._ready_lock:
            if not self._tables_ready:
                self.tables.ensure_tables()
                self._tables_ready = True
        return self.tables

    def health_probes(self) -> dict[str, Callable[[], None]]:
        def storage() -> None:
            # A point read of a row that never exists: one cheap round trip that proves storage answers.
            self.ready_tables().connections.get(_HEALTH_PROBE_USER)

        return {"storage": storage}

    def close(self) -> None:
        if "tables" in self.__dict__:
            self.tables.close()
        if "queues" in self.__dict__:
            self.queues.close()


_lock = threading.Lock()
_container: Container | None = None


def check_settings() -> Settings:
    """Parse the settings now; raises ``SettingsError`` naming every missing or malformed setting."""
    return Settings.from_process_env()


def container() -> Container:
    global _container
    with _lock:
        if _container is None:
            _container = Container(Settings.from_process_env())
        return _container
