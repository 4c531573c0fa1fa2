"""`make bench`: runs each benchmark in BENCHMARKS (or `python -m bench NAME…`: those named) and merges its
figures into bench/results.json.

Figures are measured, never asserted: these machines are shared and noisy, so targets are judged by
reading the printed figures, not by a timed test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"


def _webhook() -> Mapping[str, Mapping[str, object]]:
    from bench import webhook  # imported when run: the registry itself starts nothing

    return webhook.run()


def _sync_latency() -> Mapping[str, Mapping[str, object]]:
    from bench import sync_latency

    return sync_latency.run(changes=100)


def _sync_costs() -> Mapping[str, Mapping[str, object]]:
    from bench import sync_costs

    return sync_costs.run(changes=500)


def _initial_sync() -> Mapping[str, Mapping[str, object]]:
    from bench import initial_sync

    # DESIGN §9 names a 10,000-event mailbox; at today's rate (60-105 events/s on 2 shared cores, slower as
    # Azurite's tables fill) that run takes 2-3 minutes or more, too long for `make bench`. So it measures
    # 500 events (and 100, to compare peak memory) and records the linear extrapolation, which is optimistic;
    # `python -m bench.initial_sync` runs the full size.
    return initial_sync.run(events=500, small_events=100)


def _renewal() -> Mapping[str, Mapping[str, object]]:
    from bench import renewal

    # 1,000 users (about 1.5 minutes, most of it signing them in); the 10,000 of DESIGN §9 are extrapolated,
    # which holds because the run is as parallel as Outlook allows (4 requests per app) and grows linearly.
    return renewal.run(users=1000)


# name → callable returning {"figure_name": {"value": number, "unit": "ms"}}.
BENCHMARKS: dict[str, Callable[[], Mapping[str, Mapping[str, object]]]] = {
    "webhook": _webhook,
    "sync_latency": _sync_latency,
    "sync_costs": _sync_costs,
    "initial_sync": _initial_sync,
    "renewal": _renewal,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench`` runs every benchmark; ``python -m bench webhook sync_costs`` only those named.
    Either way the figures measured replace their old values in results.json and the others stay."""
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    results: dict[str, object] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in names:
        run = BENCHMARKS[name]
        print(f"bench: running {name} …", flush=True)
        figures = run()
        for figure, value in figures.items():
            print(f"  {figure}: {value['value']} {value['unit']}")
        results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"bench: figures written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
