"""Asynchronous delivery of change and lifecycle notifications to webhooks, as Graph's rules say.

- Items for the same URL are batched into one ``{"value": [...]}`` POST (possibly from several subscriptions),
  after a short coalescing delay, at most ``notification_batch_max`` per POST, one POST in flight per URL.
- A POST must answer 2xx within ``notification_timeout`` (3 s). Otherwise its items are retried after the
  delays in ``notification_retry_delays`` (emulator-clock seconds: Graph retries every 10 min for 4 hours),
  then dropped; a drop can trigger a ``missed`` lifecycle notification.
- Slow endpoints: an answer slower than ``slow_response_seconds`` counts as slow; once ``slow_min_sample``
  answers were seen in the current window, a slow share of ``slow_delay_ratio`` delays new notifications by
  ``slow_delay_seconds`` and ``slow_drop_ratio`` drops them.
Every attempt is recorded as a ``Delivery`` for tests and the control API.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.util import Json, fmt_utc

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    item: Json
    subscription_id: str
    lifecycle: bool
    attempt: int = 1
    due: float = 0.0  # emulator-clock timestamp


@dataclass
class Delivery:
    id: int
    url: str
    attempt: int
    subscription_ids: list[str]
    lifecycle: bool
    payload: Json
    status: int | None = None
    outcome: str = "pending"  # delivered | failed | timeout | error | dropped
    latency_ms: float = 0.0
    time: str = ""

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "url": self.url,
            "attempt": self.attempt,
            "subscriptionIds": self.subscription_ids,
            "lifecycle": self.lifecycle,
            "status": self.status,
            "outcome": self.outcome,
            "latencyMs": round(self.latency_ms, 1),
            "time": self.time,
            "payload": self.payload,
        }


@dataclass
class _Endpoint:
    pending: list[Pending] = field(default_factory=list)
    busy: bool = False
    window_start: float = 0.0
    answered: int = 0
    slow: int = 0


class Notifier:
    def __init__(
        self,
        settings: EmulatorSettings,
        clock: Clock,
        on_dropped: Callable[[list[Pending]], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_dropped = on_dropped
        self._endpoints: dict[str, _Endpoint] = {}
        self._deliveries: list[Delivery] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        clock.subscribe(self._wake)

    # --- lifecycle ---

    def start(self) -> None:
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="graph-notify")
        self._thread = threading.Thread(target=self._run, name="graph-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- queueing ---

    def enqueue(self, url: str, item: Json, subscription_id: str, *, lifecycle: bool = False) -> None:
        now = self._clock.now().timestamp()
        pending = Pending(
            item, subscription_id, lifecycle, 1, now + self._settings.notification_coalesce_seconds
        )
        with self._cond:
            endpoint = self._endpoints.setdefault(url, _Endpoint(window_start=now))
            verdict = None if lifecycle else self._slow_verdict(endpoint, now)
            if verdict == "drop":
                dropped = self._record_drop(url, [pending], "dropped: endpoint too slow")
            else:
                if verdict == "delay":
                    pending.due += self._settings.slow_delay_seconds
                endpoint.pending.append(pending)
                self._cond.notify_all()
                return
        self._report_drops(dropped)

    def deliveries(self) -> list[Delivery]:
        with self._cond:
            return list(self._deliveries)

    def pending_count(self) -> int:
        with self._cond:
            return sum(len(e.pending) for e in self._endpoints.values()) + sum(
                1 for e in self._endpoints.values() if e.busy
            )

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued for now or in flight (items waiting for a later retry are ignored)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._clock.now().timestamp()
            with self._cond:
                soon = any(
                    e.busy or any(p.due <= now + 0.5 for p in e.pending) for e in self._endpoints.values()
                )
            if not soon:
                return True
            time.sleep(0.02)
        return False

    # --- the worker ---

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock.now().timestamp()
                batches = self._take_due(now)
                if not batches:
                    wait = self._next_due(now)
                    self._cond.wait(timeout=min(wait, 1.0) if wait is not None else 1.0)
                    continue
            for url, batch in batches:
                assert self._pool is not None
                try:
                    self._pool.submit(self._deliver, url, batch)
                except RuntimeError:  # the pool is shutting down
                    return

    def _take_due(self, now: float) -> list[tuple[str, list[Pending]]]:
        batches = []
        for url, endpoint in self._endpoints.items():
            if endpoint.busy:
                continue
            due = [p for p in endpoint.pending if p.due <= now][: self._settings.notification_batch_max]
            if due:
                ids = {id(p) for p in due}
                endpoint.pending = [p for p in endpoint.pending if id(p) not in ids]
                endpoint.busy = True
                batches.append((url, due))
        return batches

    def _next_due(self, now: float) -> float | None:
        dues = [p.due for e in self._endpoints.values() if not e.busy for p in e.pending]
        return max(min(dues) - now, 0.0) if dues else None

    def _deliver(self, url: str, batch: list[Pending]) -> None:
        payload: Json = {"value": [p.item for p in batch]}
        attempt = max(p.attempt for p in batch)
        delivery = Delivery(
            next(self._ids),
            url,
            attempt,
            list(dict.fromkeys(p.subscription_id for p in batch)),
            all(p.lifecycle for p in batch),
            payload,
            time=fmt_utc(self._clock.now()),
        )
        started = time.monotonic()
        try:
            with requests.Session() as session:
                response = session.post(
                    url,
                    json=payload,
                    timeout=self._settings.notification_timeout,
                    verify=self._settings.webhook_ca_path or True,
                )
            delivery.status = response.status_code
            delivery.outcome = "delivered" if 200 <= response.status_code < 300 else "failed"
        except requests.Timeout:
            delivery.outcome = "timeout"
        except requests.RequestException as exc:
            delivery.outcome = "error"
            logger.info("notification to %s failed: %s", url, type(exc).__name__)
        delivery.latency_ms = (time.monotonic() - started) * 1000
        slow = (
            delivery.latency_ms / 1000 > self._settings.slow_response_seconds or delivery.outcome == "timeout"
        )
        now = self._clock.now().timestamp()
        dropped: list[Pending] = []
        with self._cond:
            self._deliveries.append(delivery)
            endpoint = self._endpoints[url]
            endpoint.busy = False
            self._count_answer(endpoint, now, slow)
            if delivery.outcome != "delivered":
                dropped = self._schedule_retry(url, endpoint, batch, now)
            self._cond.notify_all()
        self._report_drops(dropped)

    def _schedule_retry(
        self, url: str, endpoint: _Endpoint, batch: list[Pending], now: float
    ) -> list[Pending]:
        delays = self._settings.notification_retry_delays
        dropped = []
        for pending in batch:
            if pending.attempt > len(delays):
                dropped.append(pending)
                continue
            pending.due = now + delays[pending.attempt - 1]
            pending.attempt += 1
            endpoint.pending.append(pending)
        return self._record_drop(url, dropped, "dropped: retries exhausted") if dropped else []

    def _report_drops(self, dropped: list[Pending]) -> None:
        if dropped and self._on_dropped is not None:
            self._on_dropped(dropped)

    def _record_drop(self, url: str, dropped: list[Pending], reason: str) -> list[Pending]:
        """Record dropped items; return the change notifications among them (for a ``missed``)."""
        delivery = Delivery(
            next(self._ids),
            url,
            max(p.attempt for p in dropped),
            list(dict.fromkeys(p.subscription_id for p in dropped)),
            all(p.lifecycle for p in dropped),
            {"value": [p.item for p in dropped]},
            outcome="dropped",
            time=fmt_utc(self._clock.now()),
        )
        delivery.payload["reason"] = reason
        self._deliveries.append(delivery)
        return [p for p in dropped if not p.lifecycle]

    # --- slow endpoints ---

    def _roll_window(self, endpoint: _Endpoint, now: float) -> None:
        if now - endpoint.window_start >= self._settings.slow_window_seconds:
            endpoint.window_start, endpoint.answered, endpoint.slow = now, 0, 0

    def _count_answer(self, endpoint: _Endpoint, now: float, slow: bool) -> None:
        self._roll_window(endpoint, now)
        endpoint.answered += 1
        endpoint.slow += int(slow)

    def _slow_verdict(self, endpoint: _Endpoint, now: float) -> str | None:
        self._roll_window(endpoint, now)
        if endpoint.answered < self._settings.slow_min_sample:
            return None
        share = endpoint.slow / endpoint.answered
        if share >= self._settings.slow_drop_ratio:
            return "drop"
        if share >= self._settings.slow_delay_ratio:
            return "delay"
        return None
