"""The end-to-end kit: the emulators as one world, a browser made of requests, and looks into storage.

Nothing is mocked: the local Functions host runs ``function_app.py`` in its own process against Azurite, the
Entra ID emulator (HTTPS, test CA), the Graph emulator (HTTPS, same CA, tokens checked against the identity
emulator's keys) and the CRM emulator; the test drives them all over real sockets. The world, the browser and
the storage look live in ``devkit/scenario.py`` (the demo uses them too) and are re-exported here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from devkit.scenario import (
    CLIENT_SECRET,
    CRM_API_KEY,
    CRM_ORIGIN,
    CRM_SIGNING_SECRET,
    RETURN_URL,
    Arrival,
    Browser,
    Landing,
    World,
    fast_queue_host_json,
    key_setting,
    new_key,
    running_world,
    storage_for,
)

__all__ = [
    "CLIENT_SECRET",
    "CRM_API_KEY",
    "CRM_ORIGIN",
    "CRM_SIGNING_SECRET",
    "RETURN_URL",
    "Arrival",
    "Browser",
    "Landing",
    "LogCollector",
    "World",
    "fast_queue_host_json",
    "key_setting",
    "new_key",
    "repo_path",
    "running_world",
    "storage_for",
    "unique_prefix",
    "wait_until",
]


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unique_prefix() -> str:
    return "e" + uuid.uuid4().hex[:12]


class LogCollector(logging.Handler):
    """Every record logged in the test process (emulators, the test's own clients) while it is installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")
        except Exception:  # a record that cannot be formatted is still worth a line
            self.lines.append(f"{record.name} {record.levelname} {record.msg!r}")

    def install(self) -> Iterator[LogCollector]:
        root = logging.getLogger()
        previous = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(previous)


def repo_path(*parts: str) -> Path:
    return Path(__file__).resolve().parents[2].joinpath(*parts)
