"""``bench/renewal.py`` still runs (with a few users; the figures themselves are read from ``make bench``,
never asserted), renews every subscription it set up, and stops the host it started."""

from __future__ import annotations

from pathlib import Path

from bench.renewal import run
from devkit.azurite import AzuriteEndpoints
from tests.integration.test_bench_webhook import processes


def test_the_renewal_benchmark_renews_every_subscription_and_stops_what_it_started(
    azurite: AzuriteEndpoints, tmp_path: Path
) -> None:
    lines: list[str] = []

    figures = run(
        users=3, connection_string=azurite.connection_string, work_dir=tmp_path, report=lines.append
    )

    assert figures["renewal_subscriptions"] == {"value": 3, "unit": "subscriptions"}
    # One PATCH per subscription: nothing recreated, nothing retried.
    assert figures["renewal_graph_requests_per_subscription"] == {"value": 1.0, "unit": "requests"}
    assert figures["renewal_throttled_requests"]["value"] == 0
    assert isinstance(figures["renewal_seconds"]["value"], float)
    assert any("3 subscriptions renewed" in line for line in lines)
    assert [pid for pid, command in processes() if str(tmp_path) in command] == []
