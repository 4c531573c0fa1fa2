"""The renewal timer at scale (DESIGN §9: 10,000 subscriptions renewed in < 5 min, within Graph's limits).

Starts the whole service (``bench.sync_scenario``) with the host's sync runs and timers off, connects
``--users`` users through the real sign-in trip (each gets its events subscription, handshake included),
then moves the emulators' shared clock to 11 hours before the first subscription expires (so every one is
due: the next run is in six hours) and runs one renewal (``SubscriptionRenewal.renew_due``, built by
``sync_core.wiring.Container`` from the host's settings, in this process so that it runs on the emulators'
clock). Access tokens are issued with two minutes to live, inside MSAL's refresh margin, so that each user
costs what it costs in production days after signing in (MSAL judges expiry by the real clock, not the
emulators'): the token cache read and decrypted, a refresh at Entra ID, the cache written back, one PATCH at
Graph, the record saved.

Figures: the run's seconds and subscriptions per second, the extrapolation to 10,000 subscriptions (the run
is as parallel as Outlook allows, 4 requests at a time per app, so time grows linearly with the count),
Graph requests per renewed subscription and how many of them Graph throttled. Every subscription must have
been renewed, or the run fails.

    python -m bench.renewal [--users 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from bench.sync_scenario import BenchError, BenchStack, Figures, figure, running_stack
from sync_core.config import Settings
from sync_core.wiring import Container

TARGET_SUBSCRIPTIONS = 10_000  # DESIGN §9
DUE_BEFORE_EXPIRY = timedelta(hours=11)  # inside the next run (6 h) plus the renewal margin
CONNECTING_THREADS = 4  # users sign in a few at a time, as a rollout would
SHORT_TOKEN_LIFETIME_S = 120  # under MSAL's 5-minute refresh margin: every silent acquire refreshes


def run(
    *,
    users: int = 1000,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    report: Callable[[str], None] = print,
) -> Figures:
    """Renew ``users`` users' subscriptions in one run; ``{"renewal_seconds": {…}, …}``.
    ``connection_string``: an Azurite already running (else one is started and stopped here); ``work_dir``:
    where the host keeps its files (else a temporary folder)."""
    names = [f"renew{number:05d}" for number in range(users)]
    with running_stack(
        names,
        connection_string=connection_string,
        work_dir=work_dir,
        settings={"AzureWebJobs.reconcile.Disabled": "true", "INITIAL_BACKFILL": "false"},
    ) as stack:
        stack.world.identity.access_token_lifetime = SHORT_TOKEN_LIFETIME_S
        connected = _connect_all(stack, names, report)
        graph = stack.world.graph
        ours = {record.value.subscription_id for record in stack.storage.subscriptions.list_all()}
        expiries = [
            datetime.fromisoformat(s["expirationDateTime"]) for s in graph.subscriptions() if s["id"] in ours
        ]
        if len(expiries) != connected:
            raise BenchError(
                f"{connected} users connected but Graph holds {len(expiries)} of their subscriptions"
            )
        graph.advance_clock((min(expiries) - DUE_BEFORE_EXPIRY - graph.now()).total_seconds())
        with _container(stack) as container:
            renewal = container.renewal  # built before the clock starts: no request made yet
            graph.reset_request_log()
            result = renewal.renew_due()
        log = graph.request_log()
    if result.changes.renewed != connected or result.failed or result.reconnect_required:
        raise BenchError(
            f"{connected} subscriptions due, but {result.changes.renewed} renewed, "
            f"{len(result.failed)} failed, {len(result.reconnect_required)} reconnect_required"
        )
    throttled = sum(1 for entry in log if entry["status"] == 429)
    rate = connected / result.seconds
    report(
        f"  renewal: {connected} subscriptions renewed in {result.seconds:.1f} s ({rate:.0f}/s), "
        f"{len(log)} Graph requests, {throttled} throttled"
    )
    return {
        "renewal_subscriptions": figure(connected, "subscriptions", 0),
        "renewal_seconds": figure(result.seconds, "s", 1),
        "renewal_subscriptions_per_s": figure(rate, "subscriptions/s", 1),
        "renewal_10000_extrapolated_s": figure(TARGET_SUBSCRIPTIONS / rate, "s", 0),
        "renewal_graph_requests_per_subscription": figure(len(log) / connected, "requests", 3),
        "renewal_throttled_requests": figure(throttled, "requests", 0),
    }


def _connect_all(stack: BenchStack, names: list[str], report: Callable[[str], None]) -> int:
    with ThreadPoolExecutor(CONNECTING_THREADS) as pool:
        for done, _ in enumerate(pool.map(lambda name: stack.connect(name, first_sync=False), names), 1):
            if done % 250 == 0:
                report(f"  renewal: {done} users connected")
    return len(names)


@contextlib.contextmanager
def _container(stack: BenchStack) -> Iterator[Container]:
    """The service's objects as a worker builds them, from the host's settings, on the emulators' clock."""
    settings = Settings.from_env(stack.settings)
    # The service's HTTP sessions read the test CA bundle from the environment, as the host's do.
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = stack.settings["REQUESTS_CA_BUNDLE"]
    container = Container(settings, clock=stack.world.graph.now)
    try:
        yield container
    finally:
        container.close()
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    arguments = parser.parse_args(argv)
    for name, value in run(users=arguments.users).items():
        print(f"{name}: {value['value']} {value['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
