"""Throttling and fault injection on demand, and the request log / per-mailbox counters for benchmarks.

- Fault rules answer matching requests with a status (429 with ``Retry-After``, 5xx) and/or add latency,
  ``count`` times (``None``: until cleared).
- ``MailboxConcurrency``: when a limit is set, a request arriving while that many requests of the same app
  are in flight for the same mailbox is answered 429 (Outlook's limit is 4).
- Outlook's 10,000 requests per 10 minutes per app and mailbox (emulator clock), on by default.
"""

from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.util import Json

FAULT_CODES = {
    429: ("TooManyRequests", "Please retry again later."),
    500: ("generalException", "General exception while processing."),
    502: ("BadGateway", "The server returned an invalid response."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The gateway did not receive a timely response."),
}


@dataclass
class FaultRule:
    status: int | None = 429
    count: int | None = 1
    retry_after: float | None = 2.128
    latency: float = 0.0
    mailbox: str | None = None
    method: str | None = None
    path_contains: str | None = None
    in_batch: bool | None = None
    code: str | None = None
    message: str | None = None
    id: int = 0

    def matches(self, method: str, path: str, mailbox_keys: tuple[str, ...], in_batch: bool) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.path_contains and self.path_contains.lower() not in path.lower():
            return False
        if self.mailbox and self.mailbox.lower() not in mailbox_keys:
            return False
        return self.in_batch is None or self.in_batch == in_batch

    def describe(self) -> Json:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class MailboxCounters:
    requests: int = 0
    batch_inner: int = 0
    throttled: int = 0
    by_method: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_json(self) -> Json:
        return {
            "requests": self.requests,
            "batchInner": self.batch_inner,
            "throttled": self.throttled,
            "byMethod": dict(self.by_method),
            "byStatus": dict(self.by_status),
        }


class Throttler:
    def __init__(self, settings: EmulatorSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: list[FaultRule] = []
        self._fault_ids = itertools.count(1)
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        self._recent: dict[tuple[str, str], collections.deque[float]] = {}

    def add_fault(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = next(self._fault_ids)
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[FaultRule]:
        with self._lock:
            return [rule for rule in self._faults if rule.count is None or rule.count > 0]

    def take_fault(
        self, method: str, path: str, mailbox_keys: tuple[str, ...], in_batch: bool
    ) -> FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.matches(method, path, mailbox_keys, in_batch):
                    if rule.count is not None:
                        rule.count -= 1
                    return rule
        return None

    def acquire(self, app_id: str, mailbox_id: str) -> bool:
        """Take a concurrency slot; False when the MailboxConcurrency limit is reached (no slot taken)."""
        key = (app_id, mailbox_id)
        with self._lock:
            limit = self._settings.mailbox_concurrency_limit
            if limit is not None and self._in_flight[key] >= limit:
                return False
            self._in_flight[key] += 1
            return True

    def release(self, app_id: str, mailbox_id: str) -> None:
        key = (app_id, mailbox_id)
        with self._lock:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    def over_rate(self, app_id: str, mailbox_id: str) -> float | None:
        """Seconds to wait when the app is over its per-mailbox request rate, else ``None`` (and count it)."""
        limit = self._settings.mailbox_rate_limit
        if limit is None:
            return None
        count, window = limit
        now = self._clock.now().timestamp()
        with self._lock:
            recent = self._recent.setdefault((app_id, mailbox_id), collections.deque())
            while recent and recent[0] <= now - window:
                recent.popleft()
            if len(recent) >= count:
                return max(recent[0] + window - now, 1.0)
            recent.append(now)
        return None


class RequestLog:
    """Method, path, status and latency of every request (never bodies, query strings or tokens)."""

    def __init__(self, size: int) -> None:
        self._entries: collections.deque[Json] = collections.deque(maxlen=size)
        self._counters: dict[str, MailboxCounters] = collections.defaultdict(MailboxCounters)
        self._lock = threading.Lock()

    def record(self, entry: Json) -> None:
        mailbox = entry.get("mailbox") or "-"
        with self._lock:
            self._entries.append(entry)
            counters = self._counters[mailbox]
            if entry.get("batch"):
                counters.batch_inner += 1
            else:
                counters.requests += 1
            counters.by_method[entry["method"]] += 1
            counters.by_status[str(entry["status"])] += 1
            if entry["status"] == 429:
                counters.throttled += 1

    def entries(self, mailbox: str | None = None) -> list[Json]:
        with self._lock:
            return [dict(e) for e in self._entries if mailbox is None or e.get("mailbox") == mailbox]

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {mailbox: counters.as_json() for mailbox, counters in self._counters.items()}

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._counters.clear()
