"""``python -m devkit demo``: the service running locally, syncing a user's calendar both ways, step by step.

It starts Azurite, the Entra ID (HTTPS, a throw-away CA), Graph and CRM emulators and the local Functions host
on function_app.py (pointed at them), connects a demo user through the real sign-in trip (the CRM asks the
service to connect, a scripted browser signs in at the identity emulator and posts the answer back to the
callback), then makes changes as people make them and times each one until it shows on the other side:
an Outlook create, update and delete reaching the CRM; a CRM create, update and delete reaching Outlook; and
one event edited on both sides at once (subject in Outlook, location in the CRM) merged field by field; a
weekly series with one moved and one cancelled occurrence made in Outlook reaching the CRM, and one made in
the CRM reaching Outlook. Then
it stops everything it started. Exit code 0 when every step passed; 1 with the failing step's reason otherwise
(a change that has not arrived after --timeout seconds fails its step). The host's log stays in
.devkit/demo/host/host.log. The steps are ``SETUP_STEPS`` here, ``SYNC_STEPS`` and ``CHECK_STEPS`` in
devkit/demo_sync.py and ``SERIES_STEPS`` in devkit/demo_series.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from devkit.azurite import Azurite, AzuriteEndpoints
from devkit.crm_emulator import CrmServiceClient
from devkit.host_process import REPO_ROOT, HostProcess, HostStartError, loopback_session
from devkit.relay import Relay
from devkit.scenario import (
    RETURN_URL,
    Browser,
    ScenarioError,
    World,
    fast_queue_host_json,
    new_key,
    running_world,
    storage_for,
)
from sync_core.adapters.tables import TableStorage

DEMO_USER = "megan"  # megan@contoso.example in the identity emulator; CRM user usr-megan
# The host gets only these variables from the demo's environment; its settings come from its settings file.
# (A machine-wide REQUESTS_CA_BUNDLE, say, would otherwise win over the demo CA the settings name.)
HOST_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


class DemoError(RuntimeError):
    """A step did not get what it expected; the message says what it got."""


@dataclass(frozen=True)
class Outcome:
    """What a step shows: a detail line, and for a sync step the time from the change to its arrival."""

    detail: str
    arrival_ms: float | None = None


@dataclass
class DemoRun:
    """What the steps share: the app, the work directory, what has been started, and how to stop it."""

    app: Path
    sample_settings: Path
    work_dir: Path
    timeout: float = 20.0
    poll_interval: float = 0.02
    fast_queue_polling: bool = False
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    azurite: AzuriteEndpoints | None = None
    relay: Relay | None = None
    world: World | None = None
    host: HostProcess | None = None
    host_settings: dict[str, str] = field(default_factory=dict)
    crm_client: CrmServiceClient | None = None
    browser: Browser | None = None
    storage: TableStorage | None = None
    user_id: str = ""
    items: dict[str, Any] = field(default_factory=dict)  # ids one step leaves for the next
    timings: list[tuple[str, float]] = field(default_factory=list)

    # --- what the steps reach for, once started ---

    def the_world(self) -> World:
        if self.world is None:
            raise DemoError("the emulators are not running")
        return self.world

    def the_host(self) -> HostProcess:
        if self.host is None:
            raise DemoError("the host is not running")
        return self.host

    def the_crm_client(self) -> CrmServiceClient:
        if self.crm_client is None:
            raise DemoError("the host is not running")
        return self.crm_client

    def oid(self) -> str:
        return self.the_world().users[DEMO_USER].oid


Step = tuple[str, Callable[[DemoRun], Outcome]]


def start_azurite(run: DemoRun) -> Outcome:
    azurite = Azurite()
    run.azurite = azurite.start()
    run.stack.callback(azurite.stop)
    return Outcome(f"queues at port {run.azurite.queue_port}, tables at port {run.azurite.table_port}")


def start_emulators(run: DemoRun) -> Outcome:
    relay = run.stack.enter_context(Relay())
    run.relay = relay
    ca_dir = run.work_dir / "ca"
    world = run.stack.enter_context(running_world(ca_dir, [relay.url], [DEMO_USER]))
    run.world = world
    return Outcome(
        f"Entra ID {world.identity.base_url} and Graph {world.graph.base_url} over HTTPS "
        f"(throw-away CA {world.ca.cert_path}), CRM {world.crm.base_url}; the app's public URL {relay.url}"
    )


def start_host(run: DemoRun) -> Outcome:
    if not run.app.is_file():
        raise DemoError(f"there is no {run.app} to run yet")
    if run.azurite is None or run.relay is None:
        raise DemoError("Azurite and the emulators must run first")
    world = run.the_world()
    document = json.loads(run.sample_settings.read_text(encoding="utf-8"))
    prefix = "demo" + uuid.uuid4().hex[:8]
    storage = run.azurite.connection_string
    settings = {
        **document["Values"],
        "AzureWebJobsStorage": storage,
        **world.host_settings(run.relay.url, prefix, new_key("demo1")),
    }
    run.host_settings = settings
    host_dir = run.work_dir / "host"
    host = HostProcess(
        run.app,
        work_dir=host_dir,
        settings=settings,
        env={name: os.environ[name] for name in HOST_ENV_PASSTHROUGH if name in os.environ},
        host_json=fast_queue_host_json(run.work_dir / "host-json") if run.fast_queue_polling else None,
    )
    run.stack.callback(host.stop)
    run.host = host.start()
    run.relay.point_at(host.base_url)
    world.secrets_seen.update({host.function_key, host.master_key})
    run.crm_client = run.stack.enter_context(world.crm.service_client(run.relay.url, host.function_key))
    run.browser = Browser(world.ca, world.secrets_seen)
    run.stack.callback(run.browser.close)
    run.storage = storage_for(storage, prefix)
    run.stack.callback(run.storage.close)
    names = [function["name"] for function in host.status()["functions"]]
    return Outcome(f"listening on {host.base_url}; {len(names)} functions: {', '.join(names) or '(none)'}")


def call_health(run: DemoRun) -> Outcome:
    host = run.the_host()
    started = time.perf_counter()
    with loopback_session() as session:
        response = session.get(host.url("/api/health"), timeout=10)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise DemoError(f"GET /api/health answered {response.status_code}: {response.text[:300]}")
    return Outcome(f"GET /api/health → 200 in {elapsed_ms:.0f} ms: {response.text[:200]}")


def connect_user(run: DemoRun) -> Outcome:
    """As the CRM and the user's browser do: connect → Entra sign-in → form_post to the callback."""
    world, client, browser = run.the_world(), run.the_crm_client(), run.browser
    assert browser is not None
    user = world.users[DEMO_USER]
    run.user_id = f"usr-{DEMO_USER}"
    world.crm.add_user(run.user_id, user.upn, DEMO_USER.title() + " (demo)")
    world.graph.add_mailbox(user.oid, upn=user.upn, display_name=DEMO_USER.title())
    answer = client.connect(run.user_id, RETURN_URL, login_hint=user.upn)
    if answer.status != 200:
        raise DemoError(f"POST /api/users/{run.user_id}/connect answered {answer.status}: {answer.body}")
    landing = browser.sign_in(answer.body["authorizeUrl"])
    if landing.outcome != {"status": "connected"}:
        raise DemoError(f"the sign-in ended at {landing.location} ({landing.status})")
    deadline = time.monotonic() + run.timeout
    while True:
        status = client.status(run.user_id)
        if status.status == 200 and status.body.get("lastGoodSyncAt"):
            break
        if time.monotonic() > deadline:
            raise DemoError(
                f"the first sync of {run.user_id} did not run within {run.timeout:g} s: {status.body}"
            )
        time.sleep(run.poll_interval * 5)
    calendar = [item for item in status.body.get("subscriptions", []) if item.get("resource") == "calendar"]
    return Outcome(
        f"{user.upn} signed in (auth code + PKCE, form_post) → {landing.outcome}; CRM user {run.user_id} is "
        f"{status.body['state']}, calendar subscription {calendar[0]['state'] if calendar else 'missing'}, "
        "first sync done"
    )


def stop_everything(run: DemoRun) -> Outcome:
    host = run.host
    code = host.stop() if host is not None else 0
    run.stack.close()
    if code != 0:
        raise DemoError(f"the host exited with {code} on SIGTERM; see {host.log_path if host else 'its log'}")
    return Outcome("host exited 0 on SIGTERM; emulators, relay and Azurite stopped")


SETUP_STEPS: tuple[Step, ...] = (
    ("Start Azurite", start_azurite),
    ("Start the Entra ID, Graph and CRM emulators", start_emulators),
    ("Start the local Functions host on function_app.py", start_host),
    ("Call the health endpoint", call_health),
    ("Connect a demo user through the Entra ID sign-in", connect_user),
)


def steps() -> tuple[Step, ...]:
    from devkit.demo_series import SERIES_STEPS
    from devkit.demo_sync import CHECK_STEPS, SYNC_STEPS

    return (*SETUP_STEPS, *SYNC_STEPS, *SERIES_STEPS, *CHECK_STEPS, ("Stop everything", stop_everything))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", type=Path, default=REPO_ROOT / "function_app.py", help="the app to run")
    parser.add_argument(
        "--sample-settings",
        type=Path,
        default=REPO_ROOT / "local.settings.sample.json",
        help="settings to run it with (storage, emulator URLs and secrets are replaced by the demo's)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=REPO_ROOT / ".devkit" / "demo", help="logs, keys, CA"
    )
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds a change may take to arrive (default 20)"
    )
    parser.add_argument(
        "--fast-queue-polling",
        action="store_true",
        help="poll the sync queue every 0.2 s at most (host.json as deployed: up to every 2 s)",
    )


def _mark(ok: bool) -> str:
    """✓ / ✗, or OK / FAILED where stdout cannot print them (a non-UTF-8 locale)."""
    symbol = "✓" if ok else "✗"
    try:
        symbol.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK" if ok else "FAILED"
    return symbol


def _text(line: str) -> str:
    encoding = sys.stdout.encoding or "ascii"
    return line.encode(encoding, errors="replace").decode(encoding, errors="replace")


def run(args: argparse.Namespace) -> int:
    demo = DemoRun(
        app=args.app.resolve(),
        sample_settings=args.sample_settings,
        work_dir=args.work_dir.resolve(),
        timeout=args.timeout,
        fast_queue_polling=args.fast_queue_polling,
    )
    all_steps = steps()
    began = time.perf_counter()
    print(
        "crm-m365-sync demo: Azurite, the emulators and the local Functions host on function_app.py; "
        "one user's calendar synced both ways.\n"
        "Sync steps show the time from the change on one side to its arrival on the other "
        f"(polled every {demo.poll_interval * 1000:.0f} ms).",
        flush=True,
    )
    with demo.stack:
        for number, (title, step) in enumerate(all_steps, start=1):
            started = time.perf_counter()
            try:
                outcome = step(demo)
            except (
                DemoError,
                ScenarioError,
                HostStartError,
                RuntimeError,
                OSError,
                requests.RequestException,
            ) as error:
                print(_text(f"{_mark(False)} [{number}/{len(all_steps)}] {title}: {error}"), file=sys.stderr)
                if demo.host is not None:
                    print(f"  host log: {demo.host.log_path}", file=sys.stderr)
                print("demo FAILED; stopping everything it started", file=sys.stderr, flush=True)
                return 1
            took = (time.perf_counter() - started) * 1000
            timing = (
                f"arrived in {outcome.arrival_ms:.0f} ms"
                if outcome.arrival_ms is not None
                else f"took {took:.0f} ms"
            )
            if outcome.arrival_ms is not None:
                demo.timings.append((title, outcome.arrival_ms))
            line = f"{_mark(True)} [{number}/{len(all_steps)}] {title} — {timing}\n      {outcome.detail}"
            print(_text(line), flush=True)
    _summary(demo, time.perf_counter() - began)
    return 0


def _summary(demo: DemoRun, seconds: float) -> None:
    width = max((len(title) for title, _ in demo.timings), default=0)
    lines = ["", "Timings (change on one side → seen on the other):"]
    lines += [f"  {title:<{width}}  {ms:6.0f} ms" for title, ms in demo.timings]
    host_log = demo.host.log_path if demo.host is not None else demo.work_dir / "host" / "host.log"
    lines += [
        "",
        "Where to look next:",
        "  README.md                 what the service does: its endpoints, queues and timers, settings",
        "  docs/operations.md        running it: webhook, renewal, sweep, a user's state, poison messages",
        "  docs/devkit.md            the local host and the emulators used here",
        f"  {host_log}",
        "                            the host's log of this run: function executions, sync runs, CRM calls",
        f"  GET /api/users/{demo.user_id or '{crmUserId}'}/status",
        "                            the user's sync status as the CRM sees it (state, errors, sync log)",
        "",
        f"demo finished: {len(demo.timings)} changes synced, everything stopped, in {seconds:.1f} s",
    ]
    print(_text("\n".join(lines)), flush=True)
