"""The emulator's knobs (Graph's real figures by default) and its advanceable clock."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devkit.graph_emulator.util import UTC

# Graph's maximum subscription lifetimes in minutes (graph-facts.md, "Subscriptions").
DEFAULT_MAX_LIFETIME_MINUTES = {"events": 4230, "contacts": 4230, "messages": 4230, "todoTask": 4230}
DEFAULT_MAX_LIFETIME_WITH_RESOURCE_DATA_MINUTES = 1440


@dataclass
class EmulatorSettings:
    """Every figure defaults to what Graph documents; tests shorten the slow ones (retries, delays)."""

    # Subscriptions and the validation handshake.
    max_lifetime_minutes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_LIFETIME_MINUTES))
    max_lifetime_with_resource_data_minutes: int = DEFAULT_MAX_LIFETIME_WITH_RESOURCE_DATA_MINUTES
    max_subscriptions_per_mailbox: int = 1000
    handshake_timeout: float = 10.0
    require_https_webhooks: bool = False
    webhook_ca_path: str | None = None
    # Change notifications: 3 s timeout, retried every 10 min for up to 4 hours (emulator-clock seconds).
    notification_timeout: float = 3.0
    notification_retry_delays: tuple[float, ...] = (600.0,) * 24
    notification_batch_max: int = 100
    notification_coalesce_seconds: float = 0.05
    send_missed_on_drop: bool = True
    # Slow endpoints: >2.9 s is slow; after 100 notifications, >=10 % slow delays them 10 min, >=15 % drops.
    slow_response_seconds: float = 2.9
    slow_min_sample: int = 100
    slow_delay_ratio: float = 0.10
    slow_drop_ratio: float = 0.15
    slow_delay_seconds: float = 600.0
    slow_window_seconds: float = 600.0
    # After reauthorizationRequired, deliveries for the subscription stop when nobody reauthorizes in time.
    reauthorization_grace_seconds: float = 3600.0
    # Paging.
    default_page_size: int = 10
    max_page_size: int = 1000
    # Delta: replay this many already-reported changes at the start of each incremental round (0 = none).
    delta_replay: int = 0
    delta_round_cache: int = 5000
    # Series changes report vanished occurrences within [now - before, now + after].
    series_horizon_days: tuple[int, int] = (730, 1460)
    # Throttling (Outlook): requests per app and mailbox per window; concurrency limit when enabled.
    mailbox_rate_limit: tuple[int, float] | None = (10_000, 600.0)
    mailbox_concurrency_limit: int | None = None
    batch_max_requests: int = 20
    batch_shuffle_responses: bool = True
    # Mailboxes: create one on first use of a token whose ``oid`` has none (off: 404 MailboxNotEnabled...).
    auto_create_mailboxes: bool = True
    tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    teams_block_in_body: bool = True
    # Meetings: an event's attendees that are mailboxes here get a copy in their calendar (invitations.py).
    deliver_invitations: bool = True
    request_log_size: int = 100_000


class Clock:
    """A base time source (wall time, or a clock shared with the identity emulator) plus an offset that
    ``advance`` moves forward; listeners hear every advance."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self.base = base
        self._offset = dt.timedelta()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> dt.datetime:
        with self._lock:
            offset = self._offset
        return dt.datetime.fromtimestamp(self.base(), UTC) + offset

    def advance(self, seconds: float) -> dt.datetime:
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        with self._lock:
            self._offset += dt.timedelta(seconds=seconds)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
        return self.now()

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset.total_seconds()

    def subscribe(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)
