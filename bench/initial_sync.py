"""The first sync of a big mailbox: events per second through the engine, and peak memory (DESIGN §9: a
10,000-event initial sync at ≥ 500 events/s on 2 cores, with flat memory).

Starts the whole service (``bench.sync_scenario``) with ``INITIAL_BACKFILL=true`` (events that existed
before the user connected are synced too) and the host's own sync runs switched off
(``AzureWebJobs.reconcile.Disabled``). For each mailbox size (10,000 events, and 1,000 to show that memory
does not grow with it) a user's Graph mailbox is filled directly (``GraphEmulator.seed_events``: no
notifications, no requests), single events spread over the sync window, a fifth of them with attendees; then
the user connects through the real sign-in trip (tokens, subscription). Then one sync run
(``Reconciler.run``, built by ``sync_core.wiring.Container`` from the same settings as the host) runs in a
fresh Python process of its own, so that its peak resident memory (``getrusage``) is the engine's alone, not
the emulators'. It reads the calendar's delta in pages of 100 and creates every event in the CRM emulator.

Figures: events synced per second of the run's wall time, the run process's peak RSS for each size, and how
much of the run the engine spent on its own CPU (the rest is waiting for Graph, the CRM and Table Storage,
which share the same two cores here). Every event must have reached the CRM, or the run fails.

    python -m bench.initial_sync [--events 10000] [--small-events 1000] [--profile]
    python -m bench.initial_sync --engine USER_ID   (the measured run itself; settings from the environment)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.sync_scenario import (
    BenchError,
    BenchStack,
    Figures,
    Json,
    figure,
    host_env,
    running_stack,
)
from bench.table_meter import TableMeter
from devkit.azurite import Azurite
from devkit.host_process import REPO_ROOT

# Inside the default sync window (now - 60 days … now + 365 days), with a margin at both ends.
SPREAD_PAST_DAYS = 55
SPREAD_FUTURE_DAYS = 355
ENGINE_TIMEOUT = 3600.0
TARGET_EVENTS = 10_000  # DESIGN §9's mailbox


def events_for(count: int, seed: int) -> Iterator[Json]:
    """``count`` single events as people have them: spread over the window, most with a location, some with
    a body, a fifth with external attendees."""
    rng = random.Random(seed)
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=SPREAD_PAST_DAYS)
    span_minutes = (SPREAD_PAST_DAYS + SPREAD_FUTURE_DAYS) * 24 * 60
    for number in range(count):
        start = first + timedelta(minutes=30 * ((number * span_minutes // max(count, 1)) // 30))
        end = start + timedelta(minutes=rng.choice((30, 60, 60, 90)))
        event: Json = {
            "subject": f"Seeded {number}",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        }
        if rng.random() < 0.7:
            event["location"] = {"displayName": f"Room {rng.randint(1, 40)}"}
        if rng.random() < 0.5:
            event["body"] = {"contentType": "text", "content": f"Notes for meeting {number}. " * 4}
        if rng.random() < 0.2:
            event["attendees"] = [
                {
                    "emailAddress": {
                        "address": f"guest{rng.randint(1, 500)}@fabrikam.example",
                        "name": "Guest",
                    },
                    "type": "required",
                }
                for _ in range(rng.randint(1, 3))
            ]
        yield event


def run(
    *,
    events: int = 10_000,
    small_events: int = 1_000,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    profile: bool = False,
    count_tables: bool = False,
    report: Callable[[str], None] = print,
) -> Figures:
    """Sync a mailbox of ``events`` events and one of ``small_events``; returns
    ``{"initial_sync_events_per_s": {…}, "initial_sync_peak_rss_mb": {…}, …}``. ``profile``: report the
    engine run's profile; ``count_tables``: put the engine's Table endpoint behind a ``TableMeter`` and report
    what it did (an analysis: the proxy costs a little time)."""
    sizes = {"megan": events, "nestor": small_events}
    measured: dict[str, Json] = {}
    with contextlib.ExitStack() as resources:
        if connection_string is None:
            connection_string = resources.enter_context(Azurite()).connection_string
        meter = resources.enter_context(TableMeter(connection_string)) if count_tables else None
        stack = resources.enter_context(
            running_stack(
                tuple(sizes),
                connection_string=connection_string,
                work_dir=work_dir,
                settings={"INITIAL_BACKFILL": "true", "AzureWebJobs.reconcile.Disabled": "true"},
            )
        )
        for name, count in sizes.items():
            user = stack.world.users[name]
            stack.world.graph.add_mailbox(user.oid, upn=user.upn, display_name=name.title())
            seeding = time.monotonic()
            stack.world.graph.seed_events(user.oid, events_for(count, seed=count))
            report(f"  {name}: {count} events seeded in {time.monotonic() - seeding:.1f} s")
        # Smallest first: its process warms nothing for the big one (each run is a fresh process anyway).
        for name in sorted(sizes, key=lambda n: sizes[n]):
            user_id = stack.connect(name, first_sync=False)
            if meter is not None:
                meter.reset()
            measured[name] = _engine_run(stack, user_id, meter, profile, report)
            if meter is not None:
                counted = meter.summary(strip_prefix=stack.prefix)
                report(
                    f"  {name}: {sum(counted.values())} table transactions "
                    f"({sum(counted.values()) / sizes[name]:.2f} per event): "
                    + ", ".join(f"{count} {kind}" for kind, count in counted.items())
                )
            synced = len(stack.world.crm.activities(user_id))
            if synced != sizes[name]:
                raise BenchError(f"{sizes[name]} events in {name}'s mailbox, but {synced} reached the CRM")
            report(
                f"  {name}: {sizes[name]} events synced in {measured[name]['seconds']:.1f} s "
                f"({measured[name]['pages']} pages; engine CPU {measured[name]['cpu_seconds']:.1f} s); "
                f"peak RSS {measured[name]['peak_rss_mb']:.1f} MB "
                f"(before the run {measured[name]['start_rss_mb']:.1f} MB)"
            )
    big, small = measured["megan"], measured["nestor"]
    rate = events / big["seconds"]
    figures: Figures = {
        "initial_sync_events_per_s": figure(rate, "events/s", 1),
        "initial_sync_peak_rss_mb": figure(big["peak_rss_mb"], "MB", 1),
        "initial_sync_rss_growth_mb": figure(big["peak_rss_mb"] - big["start_rss_mb"], "MB", 1),
        "initial_sync_small_peak_rss_mb": figure(small["peak_rss_mb"], "MB", 1),
        "initial_sync_engine_cpu_share": figure(big["cpu_seconds"] / big["seconds"], "ratio", 3),
        "initial_sync_events": figure(events, "events", 0),
        "initial_sync_small_events": figure(small_events, "events", 0),
    }
    if events < TARGET_EVENTS:
        # Not measured: what the measured rate would mean for the target's mailbox.
        figures["initial_sync_10000_events_extrapolated_s"] = figure(TARGET_EVENTS / rate, "s", 0)
    return figures


def _engine_run(
    stack: BenchStack,
    user_id: str,
    meter: TableMeter | None,
    profile: bool,
    report: Callable[[str], None],
) -> Json:
    """One sync run of ``user_id`` in a fresh process with the host's settings; what it measured."""
    command = [sys.executable, "-m", "bench.initial_sync", "--engine", user_id]
    if profile:
        command.append("--profile")
    settings = dict(stack.settings)
    if meter is not None:
        settings["AzureWebJobsStorage"] = meter.connection_string
    finished = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**host_env(), **settings},
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT,
        check=False,
    )
    if finished.returncode != 0:
        raise BenchError(f"the engine run of {user_id} failed:\n{finished.stderr[-3000:]}")
    if profile:
        report(finished.stderr)
    result: Json = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def engine(user_id: str, *, profile: bool = False) -> Json:
    """The measured run (in its own process): build the engine from the environment's settings as a worker
    does, sync ``user_id`` once, and say how long it took and how much memory the process peaked at."""
    from sync_core.config import Settings
    from sync_core.wiring import Container

    container = Container(Settings.from_process_env())
    reconciler = container.reconciler  # storage, Graph, CRM and token clients built, no request made yet
    start_rss = _rss_mb()
    _reset_peak_rss()  # so the peak is the run's, not the imports'
    usage = resource.getrusage(resource.RUSAGE_SELF)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    with profiler if profiler is not None else contextlib.nullcontext():
        report = reconciler.run(user_id)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(30)  # where the run's time goes
        stats.sort_stats("tottime").print_stats(20)  # what the engine's own CPU goes to
        print(text.getvalue(), file=sys.stderr)
    container.close()
    return {
        "seconds": seconds,
        "pages": report.pages,
        "writes_to_crm": report.writes_to_crm,
        "cpu_seconds": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
        "start_rss_mb": start_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _rss_mb() -> float:
    """This process's resident set size now (Linux), else its peak so far."""
    return _proc_status_mb("VmRSS") or _peak_rss_mb()


def _peak_rss_mb() -> float:
    """This process's peak resident set size (since ``_reset_peak_rss``, where Linux allows it)."""
    return _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux ≥ 4.0: ``clear_refs`` 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _proc_status_mb(field: str) -> float | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.initial_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--small-events", type=int, default=1_000)
    parser.add_argument("--profile", action="store_true", help="print the engine run's cProfile (cumulative)")
    parser.add_argument(
        "--count-tables", action="store_true", help="count the engine's Table Storage transactions"
    )
    parser.add_argument("--engine", metavar="USER_ID", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.engine:
        print(json.dumps(engine(args.engine, profile=args.profile)))
        return 0
    figures = run(
        events=args.events,
        small_events=args.small_events,
        profile=args.profile,
        count_tables=args.count_tables,
    )
    for name, value in figures.items():
        print(f"{name}: {value['value']} {value['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
