"""``python -m devkit demo``: the service running locally, step by step, with what each step answered.

Today: start Azurite, start the local Functions host on function_app.py with the sample settings (storage
pointed at that Azurite), call GET /api/health, stop everything. Later steps (the emulators, a two-way sync)
are functions added to ``STEPS``. Exit code 0 when every step passed; 1 with the failing step's reason
otherwise. The host's log stays in .devkit/demo/host/host.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devkit.azurite import Azurite, AzuriteEndpoints
from devkit.host_process import REPO_ROOT, HostProcess, HostStartError, loopback_session


class DemoError(RuntimeError):
    """A step did not get what it expected; the message says what it got."""


@dataclass
class DemoRun:
    """What the steps share: the app, the work directory, what has been started, and how to stop it."""

    app: Path
    sample_settings: Path
    work_dir: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    azurite: AzuriteEndpoints | None = None
    host: HostProcess | None = None


Step = tuple[str, Callable[[DemoRun], str]]


def start_azurite(run: DemoRun) -> str:
    azurite = Azurite()
    run.azurite = azurite.start()
    run.stack.callback(azurite.stop)
    return f"queues at port {run.azurite.queue_port}, tables at port {run.azurite.table_port}"


def start_host(run: DemoRun) -> str:
    if not run.app.is_file():
        raise DemoError(f"there is no {run.app} to run yet")
    assert run.azurite is not None
    document = json.loads(run.sample_settings.read_text(encoding="utf-8"))
    storage = run.azurite.connection_string
    settings = {**document["Values"], "AzureWebJobsStorage": storage}
    host = HostProcess(
        run.app,
        work_dir=run.work_dir / "host",
        settings=settings,
        env={**os.environ, "AzureWebJobsStorage": storage},  # the environment wins over the settings file
    )
    run.stack.callback(host.stop)
    run.host = host.start()
    names = [function["name"] for function in host.status()["functions"]]
    return f"listening on {host.base_url}; functions: {', '.join(names) or '(none)'}"


def call_health(run: DemoRun) -> str:
    assert run.host is not None
    started = time.perf_counter()
    with loopback_session() as session:
        response = session.get(run.host.url("/api/health"), timeout=10)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise DemoError(f"GET /api/health answered {response.status_code}: {response.text[:300]}")
    return f"GET /api/health → 200 in {elapsed_ms:.1f} ms: {response.text[:300]}"


def stop_everything(run: DemoRun) -> str:
    host = run.host
    code = host.stop() if host is not None else 0
    run.stack.close()
    if code != 0:
        raise DemoError(f"the host exited with {code} on SIGTERM; see {host.log_path if host else 'its log'}")
    return "host exited 0 on SIGTERM; Azurite stopped"


STEPS: tuple[Step, ...] = (
    ("Start Azurite", start_azurite),
    ("Start the local Functions host on function_app.py", start_host),
    ("Call the health endpoint", call_health),
    ("Stop everything", stop_everything),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", type=Path, default=REPO_ROOT / "function_app.py", help="the app to run")
    parser.add_argument(
        "--sample-settings",
        type=Path,
        default=REPO_ROOT / "local.settings.sample.json",
        help="settings to run it with (AzureWebJobsStorage is replaced by the demo's Azurite)",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".devkit" / "demo", help="logs and keys")


def run(args: argparse.Namespace) -> int:
    demo = DemoRun(app=args.app.resolve(), sample_settings=args.sample_settings, work_dir=args.work_dir)
    with demo.stack:
        for number, (title, step) in enumerate(STEPS, start=1):
            print(f"[{number}/{len(STEPS)}] {title} ...", flush=True)
            started = time.perf_counter()
            try:
                result = step(demo)
            except (DemoError, HostStartError, RuntimeError, OSError, requests.RequestException) as error:
                print(f"      FAILED: {error}", file=sys.stderr, flush=True)
                if demo.host is not None:
                    print(f"      host log: {demo.host.log_path}", file=sys.stderr, flush=True)
                return 1
            print(f"      ok ({(time.perf_counter() - started) * 1000:.0f} ms) {result}", flush=True)
    print("demo finished", flush=True)
    return 0
