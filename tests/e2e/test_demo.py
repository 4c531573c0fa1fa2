"""``python -m devkit demo`` (what ``make demo`` runs), run as CI runs it: no stdin, CI=true, its own Azurite,
emulators and host. Every step prints its line; the sync steps print how long the change took to arrive."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.demo import DemoError, DemoRun, steps
from devkit.demo_series import SERIES_STEPS
from devkit.demo_sync import SYNC_STEPS, arrival
from devkit.host_process import REPO_ROOT

MARK = r"(?:✓|OK)"
FAILED = r"(?:✗|FAILED)"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devkit", "demo", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "CI": "true"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def test_the_demo_syncs_both_ways_and_prints_every_step(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_demo("--work-dir", str(tmp_path))
    took = time.monotonic() - started

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    all_steps = steps()
    for number, (title, _) in enumerate(all_steps, start=1):
        line = rf"^{MARK} \[{number}/{len(all_steps)}\] {re.escape(title)} — "
        assert re.search(line, result.stdout, re.MULTILINE), f"no line for step {title!r}:\n{output}"
    for title, _ in (*SYNC_STEPS, *SERIES_STEPS):
        timed = rf"\] {re.escape(title)} — arrived in \d+ ms$"
        assert re.search(timed, result.stdout, re.MULTILINE), f"no timing for {title!r}:\n{output}"
    assert "GET /api/health → 200" in result.stdout
    assert "Where to look next:" in result.stdout
    assert "docs/operations.md" in result.stdout
    assert str(tmp_path / "host" / "host.log") in result.stdout
    assert "GET /api/users/usr-megan/status" in result.stdout
    assert "demo finished: 9 changes synced" in result.stdout
    assert (tmp_path / "host" / "host.log").stat().st_size > 0
    assert took < 120, f"the demo took {took:.0f} s"


def test_a_failing_step_stops_the_demo_with_its_reason_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "function_app.py"

    result = run_demo("--work-dir", str(tmp_path), "--app", str(missing))

    assert result.returncode == 1, result.stdout + result.stderr
    step = re.escape("Start the local Functions host on function_app.py")
    reason = re.escape(f"there is no {missing} to run yet")
    assert re.search(rf"^{FAILED} \[3/\d+\] {step}: {reason}$", result.stderr, re.MULTILINE), result.stderr
    assert "demo FAILED; stopping everything it started" in result.stderr
    assert "Outlook create" not in result.stdout


def test_a_change_that_does_not_arrive_in_time_fails_its_step(tmp_path: Path) -> None:
    run = DemoRun(app=tmp_path, sample_settings=tmp_path, work_dir=tmp_path, timeout=0.2)
    started = time.perf_counter()

    with pytest.raises(DemoError, match=r"the CRM activity did not arrive within 0.2 s \(timeout\)"):
        arrival(run, started, lambda: None, "the CRM activity")

    assert 0.2 <= time.perf_counter() - started < 2
