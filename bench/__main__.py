"""`make bench`: runs each benchmark in BENCHMARKS and merges its figures into bench/results.json.

Figures are measured, never asserted: these machines are shared and noisy, so targets are judged by
reading the printed figures, not by a timed test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"


def _webhook() -> Mapping[str, Mapping[str, object]]:
    from bench import webhook  # imported when run: the registry itself starts nothing

    return webhook.run()


# name → callable returning {"figure_name": {"value": number, "unit": "ms"}}. The sync-latency and
# initial-sync benchmarks register here as the issues that build those paths land.
BENCHMARKS: dict[str, Callable[[], Mapping[str, Mapping[str, object]]]] = {"webhook": _webhook}


def main() -> int:
    if not BENCHMARKS:
        print("bench: no benchmarks exist yet; nothing was measured and results.json was not written.")
        return 0
    results: dict[str, object] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name, run in BENCHMARKS.items():
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
