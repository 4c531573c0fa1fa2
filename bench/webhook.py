"""Webhook answer times on the local host (DESIGN §9: p99 < 50 ms for validation and notification bursts).

Starts Azurite and the devkit host on function_app.py, seeds users with a connection and a subscription
directly through the stores (no Graph needed: only the webhook is measured), then sends, over one keep-alive
connection, validation requests and notification POSTs of 1-5 items for several users at a time, and times
each answer at the client. Every 100 POSTs the users' dirty flags are cleared, as the reconciler does at the
end of its runs, so the answers include both paths: the first notification of a user (a write and a queued
message) and the coalesced ones (a read). Sync runs themselves are switched off in this host
(``AzureWebJobs.reconcile.Disabled``): they are not what is measured.

    python -m bench.webhook [--notifications 1000] [--validations 100] [--users 20]

prints the figures; ``make bench`` (``python -m bench``) also merges them into ``bench/results.json``.
Everything started here is stopped before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_plus

import requests

from devkit.azurite import Azurite
from devkit.host_process import REPO_ROOT, HostProcess, loopback_session
from sync_core.adapters.tables import TableStorage
from sync_core.config import Secret, StorageSettings
from sync_core.domain.state import Connection, ConnectionState, SubscriptionRecord
from sync_core.domain.webhook import client_state_hash

NEVER = "0 0 0 1 1 *"  # the timers stay quiet while measuring
CLEAR_DIRTY_EVERY = 100
VALIDATION_TEXT = "Validation: Testing client application reachability for subscription"
Figures = dict[str, dict[str, object]]


def run(
    *,
    notifications: int = 1000,
    validations: int = 100,
    users: int = 20,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    seed: int = 20260314,
) -> Figures:
    """Measure; returns ``{"webhook_p99_ms": {"value": …, "unit": "ms"}, …}``. ``connection_string``: an
    Azurite already running (else one is started and stopped here); ``work_dir``: where the host keeps its
    settings and log (else a temporary directory, removed at the end)."""
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        if connection_string is None:
            connection_string = stack.enter_context(Azurite()).connection_string
        work = work_dir
        if work is None:
            work = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        prefix = "b" + uuid.uuid4().hex[:10]
        host = HostProcess(
            REPO_ROOT / "function_app.py",
            work_dir=work / "host",
            settings=_settings(connection_string, prefix),
        )
        stack.callback(host.stop)
        host.start()
        storage = TableStorage(StorageSettings(Secret(connection_string), None, None, None, prefix))
        stack.callback(storage.close)
        storage.ensure_tables()
        seeded = _seed(storage, users)
        session = stack.enter_context(loopback_session())

        dirty: set[str] = set()  # what the service's dirty flags are, as far as this client knows

        def notify(count: int) -> tuple[float, bool]:
            """One POST; its time, and whether one of its users went clean → dirty (a write and a message)."""
            picked = [rng.choice(seeded) for _ in range(count)]
            body = json.dumps({"value": [_item(sid, state) for _, sid, state in picked]}).encode()
            elapsed = _timed(session, host.url("/api/graph/notifications"), body, "application/json", 202)
            first = any(user not in dirty for user, _, _ in picked)
            dirty.update(user for user, _, _ in picked)
            return elapsed, first

        def validate() -> float:
            token = f"{VALIDATION_TEXT} Request-Id: {uuid.uuid4()}"
            url = host.url(f"/api/graph/notifications?validationToken={quote_plus(token)}")
            return _timed(session, url, b"", "text/plain; charset=utf-8", 200, expect_text=token)

        for _ in range(5):  # warm-up: first-use table and queue creation, connection set-up
            notify(1)
            validate()
        validation_ms = [validate() for _ in range(validations)]
        timed: list[tuple[float, bool]] = []
        for index in range(notifications):
            if index % CLEAR_DIRTY_EVERY == 0:
                _clear_dirty(storage, seeded)
                dirty.clear()
            timed.append(notify(rng.randint(1, 5)))
    notification_ms = [elapsed for elapsed, _ in timed]
    everything = validation_ms + notification_ms
    figures = {
        "webhook_p50_ms": _ms(_percentile(everything, 50)),
        "webhook_p95_ms": _ms(_percentile(everything, 95)),
        "webhook_p99_ms": _ms(_percentile(everything, 99)),
        "webhook_max_ms": _ms(max(everything)),
        "webhook_validation_p99_ms": _ms(_percentile(validation_ms, 99)),
        "webhook_notification_p99_ms": _ms(_percentile(notification_ms, 99)),
    }
    # The two paths of a notification POST: every user already dirty (reads only), or some went clean → dirty.
    coalesced = [elapsed for elapsed, first in timed if not first]
    waking = [elapsed for elapsed, first in timed if first]
    if coalesced:
        figures["webhook_coalesced_p99_ms"] = _ms(_percentile(coalesced, 99))
    if waking:
        figures["webhook_clean_to_dirty_p99_ms"] = _ms(_percentile(waking, 99))
        figures["webhook_clean_to_dirty_share"] = {
            "value": round(len(waking) / len(timed), 3),
            "unit": "ratio",
        }
    return figures


def _settings(connection_string: str, prefix: str) -> dict[str, str]:
    sample = json.loads((REPO_ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    return {
        **sample,
        "AzureWebJobsStorage": connection_string,
        "TABLE_NAME_PREFIX": prefix,
        "SYNC_QUEUE_NAME": f"{prefix}sync",
        "RENEWAL_SCHEDULE": NEVER,
        "SWEEP_SCHEDULE": NEVER,
        "AzureWebJobs.reconcile.Disabled": "true",
    }


def _seed(storage: TableStorage, users: int) -> list[tuple[str, str, str]]:
    """``users`` connected users with one subscription each: (user id, subscription id, clientState)."""
    now = datetime.now(UTC)
    seeded = []
    for index in range(users):
        user_id, subscription_id, state = (
            f"usr-bench-{index:03d}",
            str(uuid.uuid4()),
            secrets.token_urlsafe(48),
        )
        storage.connections.put(Connection(user_id, ConnectionState.CONNECTED, connected_since=now))
        storage.subscriptions.put(
            SubscriptionRecord(
                subscription_id,
                user_id,
                f"/users/{uuid.uuid4()}/events",
                ("created", "updated", "deleted"),
                now + timedelta(days=2),
                client_state_hash(state),
            )
        )
        seeded.append((user_id, subscription_id, state))
    return seeded


def _clear_dirty(storage: TableStorage, seeded: list[tuple[str, str, str]]) -> None:
    """What the reconciler does at the end of a run (not timed)."""
    for user_id, _, _ in seeded:
        storage.connections.update(
            user_id, lambda current: replace(current, dirty=False, dirty_since=None) if current else None
        )


def _item(subscription_id: str, client_state: str) -> dict[str, object]:
    event_id = "AAkALg" + secrets.token_urlsafe(30)
    return {
        "id": secrets.token_hex(8),
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-03-16T18:23:45.9356913+00:00",
        "changeType": "updated",
        "resource": f"Users/{subscription_id}/Events/{event_id}",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Event",
            "@odata.id": f"Users/{subscription_id}/Events/{event_id}",
            "@odata.etag": 'W/"DwAAABYAAAA"',
            "id": event_id,
        },
        "clientState": client_state,
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    }


def _timed(
    session: requests.Session,
    url: str,
    body: bytes,
    content_type: str,
    status: int,
    expect_text: str | None = None,
) -> float:
    started = time.perf_counter()
    answer = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    elapsed = time.perf_counter() - started
    if answer.status_code != status or (expect_text is not None and answer.text != expect_text):
        raise RuntimeError(f"the webhook answered {answer.status_code}, expected {status}")
    return elapsed * 1000


def _percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _ms(value: float) -> dict[str, object]:
    return {"value": round(value, 2), "unit": "ms"}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook", description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--validations", type=int, default=100)
    parser.add_argument("--users", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    figures = run(notifications=args.notifications, validations=args.validations, users=args.users)
    for name, figure in figures.items():
        print(f"{name}: {figure['value']} {figure['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
