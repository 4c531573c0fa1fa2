"""``bench/webhook.py`` still runs (with small counts; the figures themselves are read from ``make bench``,
never asserted), and stops the host it started."""

from __future__ import annotations

from pathlib import Path

from bench.webhook import run
from devkit.azurite import AzuriteEndpoints


def test_the_webhook_benchmark_measures_and_stops_what_it_started(
    azurite: AzuriteEndpoints, tmp_path: Path
) -> None:
    figures = run(
        notifications=20,
        validations=5,
        users=3,
        connection_string=azurite.connection_string,
        work_dir=tmp_path,
    )

    for name in ("webhook_p50_ms", "webhook_p95_ms", "webhook_p99_ms", "webhook_validation_p99_ms"):
        value = figures[name]["value"]
        assert figures[name]["unit"] == "ms"
        assert isinstance(value, float)
        assert value > 0
    assert (
        "Executed 'Functions.graph_notifications' (Succeeded" in (tmp_path / "host" / "host.log").read_text()
    )
    assert [pid for pid, command in processes() if str(tmp_path) in command] == []


def processes() -> list[tuple[str, str]]:
    """(pid, command line) of every process visible in /proc."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append((path.parent.name, path.read_bytes().decode("utf-8", "replace")))
        except OSError:  # it exited meanwhile
            continue
    return found
