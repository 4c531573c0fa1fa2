"""The local Functions host: runs a v2-model ``function_app.py`` the way the Azure Functions host does where
it matters, against Azurite, in one process.

    python -m devkit host [--app function_app.py] [--port 0] [--settings local.settings.json] [--keys-file F]

Start-up, in the real host's order: app settings (file ``Values``, then the environment, which wins) go into
``os.environ``; host.json is read from the app's directory; the app module is imported by path and
``app.get_functions()`` is called once; each function is indexed from its function.json-shaped bindings
(``%SETTING%`` references resolved); queues are created; then HTTP, queue listeners and timers start and the
host prints, on stdout:

    devkit host keys file: /path/to/keys.json
    devkit host listening on http://127.0.0.1:PORT

Everything else (one line per invocation, tracebacks) is logged to stderr. See docs/devkit.md for the
differences from the real host.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote

import azure.functions as func
import azure.functions.queue as func_queue
import azure.functions.timer as func_timer
from azure.core.exceptions import AzureError

from devkit.host_config import (
    DEFAULT_MAX_REQUEST_BYTES,
    HostConfig,
    HostConfigError,
    load_host_json,
    load_settings_file,
    merge_settings,
)
from devkit.host_http import (
    HostKeys,
    HttpServer,
    Incoming,
    Reply,
    authorized,
    error_reply,
    http_reply,
    joined_headers,
    json_reply,
)
from devkit.host_index import (
    AppIndex,
    AppLoadError,
    AuthLevel,
    HttpTrigger,
    IndexedFunction,
    QueueTrigger,
    TimerTrigger,
    index_functions,
    load_function_app,
)
from devkit.host_invoke import Invoker
from devkit.host_queues import QueueListener, QueueSender, trigger_message_for
from devkit.host_routes import MethodNotAllowed, RouteTable

logger = logging.getLogger("devkit.host")

LISTENING_LINE = "devkit host listening on "
KEYS_FILE_LINE = "devkit host keys file: "
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
_PAST_DUE_SECONDS = 1.0


class _TimerRunner:
    """Fires one timer function on its schedule (UTC), never overlapping itself; missed runs are skipped."""

    def __init__(self, function: IndexedFunction, invoker: Invoker, stop: threading.Event) -> None:
        assert isinstance(function.trigger, TimerTrigger)
        self._function = function
        self._schedule = function.trigger.schedule
        self._invoker = invoker
        self._stop = stop
        self.next_run: datetime | None = None
        self.last_run: datetime | None = None
        self._thread = threading.Thread(target=self._run, name=f"timer-{function.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def timer_request(self, *, past_due: bool) -> func_timer.TimerRequest:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        now = datetime.now(UTC)
        return func_timer.TimerRequest(
            past_due=past_due,
            schedule_status={
                "Last": iso(self.last_run),
                "Next": iso(self._schedule.next_after(now)),
                "LastUpdated": iso(now),
            },
            schedule={"AdjustForDST": True},
        )

    def _run(self) -> None:
        assert isinstance(self._function.trigger, TimerTrigger)
        if self._function.trigger.run_on_startup:
            self._fire(past_due=False)
        due = self._schedule.next_after(datetime.now(UTC))
        while True:
            self.next_run = due
            if self._stop.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
                return
            now = datetime.now(UTC)
            if now < due:
                continue  # woke a little early
            self._fire(past_due=(now - due).total_seconds() > _PAST_DUE_SECONDS)
            due = self._schedule.next_after(max(due, datetime.now(UTC)))

    def _fire(self, *, past_due: bool) -> None:
        request = self.timer_request(past_due=past_due)
        self.last_run = datetime.now(UTC)
        try:
            self._invoker.invoke(self._function, request)
        except Exception:  # logged by the invoker; the schedule goes on
            return


class FunctionsHost:
    def __init__(
        self,
        *,
        index: AppIndex,
        config: HostConfig,
        keys: HostKeys,
        max_request_bytes: int,
        server: HttpServer,
    ) -> None:
        self._index = index
        self._config = config
        self._keys = keys
        self._max_request_bytes = max_request_bytes
        self._by_name = {function.name.lower(): function for function in index.functions}
        self._routes: RouteTable[IndexedFunction] = RouteTable()
        for function in index.functions:
            if isinstance(function.trigger, HttpTrigger):
                self._routes.add(function.trigger.route, function.trigger.methods, function)
        self._sender = QueueSender(config.queues)
        self._invoker = Invoker(self._sender, config.function_timeout)
        self._stop = threading.Event()
        self._stopping = False
        self._admin_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="admin-invoke")
        self._listeners: list[QueueListener] = []
        self._timers: dict[str, _TimerRunner] = {}
        self._server = server
        server.host = self
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )
        self._started = time.monotonic()
        self._id = uuid.uuid4().hex

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Create queues, then start listening, polling and timing (HostConfigError if storage is down)."""
        for function in self._index.functions:
            if isinstance(function.trigger, QueueTrigger):
                listener = QueueListener(
                    function_name=function.name,
                    queue_name=function.trigger.queue_name,
                    connection_string=function.trigger.connection_string,
                    options=self._config.queues,
                    handler=self._queue_handler(function),
                )
                self._listeners.append(listener)
                try:
                    listener.start()
                except AzureError as error:
                    raise HostConfigError(
                        f"function {function.name}: cannot create queue {function.trigger.queue_name!r} "
                        f"({type(error).__name__}: {error})"
                    ) from None
            elif isinstance(function.trigger, TimerTrigger):
                self._timers[function.name] = _TimerRunner(function, self._invoker, self._stop)
        self._server_thread.start()
        for timer in self._timers.values():
            timer.start()
        self._log_functions()

    def stop(self, grace: float) -> bool:
        """Stop taking work; give in-flight invocations up to ``grace`` seconds. True if they all finished."""
        deadline = time.monotonic() + grace

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        self._stopping = True
        self._stop.set()
        for listener in self._listeners:
            listener.stop()
        if self._server_thread.is_alive():
            self._server.shutdown()
        idle = all([listener.wait_idle(remaining()) for listener in self._listeners])
        idle = self._invoker.in_flight.wait_until_at_most(0, remaining()) and idle
        for timer in self._timers.values():
            timer.join(remaining())
        self._server.server_close()
        for listener in self._listeners:
            listener.close()
        self._admin_pool.shutdown(wait=False, cancel_futures=True)
        self._sender.close()
        self._invoker.close()
        return idle

    def status(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "state": "Stopping" if self._stopping else "Running",
            "version": "devkit",
            "processUptime": round((time.monotonic() - self._started) * 1000),
            "routePrefix": self._config.route_prefix,
            "functions": [self._describe(function) for function in self._index.functions],
            "errors": dict(self._index.errors),
        }

    # HTTP

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        # In flight until the reply is written, not just while the function runs: shutdown waits for both.
        self._invoker.in_flight.enter()
        try:
            incoming = Incoming(handler)
            try:
                reply = self._dispatch(incoming)
            except Exception:  # a fault in the host itself: log it, never show it
                logger.exception("devkit host: handling a request failed")
                reply = error_reply(500, "InternalServerError", "The devkit host failed; see its log.")
            self._write(incoming, reply)
        finally:
            self._invoker.in_flight.leave()

    def _dispatch(self, incoming: Incoming) -> Reply:
        if self._stopping:
            incoming.must_close = True
            return error_reply(503, "ServiceUnavailable", "The host is shutting down")
        path = incoming.path
        if path.lower() == "/admin" or path.lower().startswith("/admin/"):
            return self._admin(incoming, path[len("/admin") :].rstrip("/"))
        rest = self._without_prefix(path)
        found = self._routes.resolve(incoming.method, rest) if rest is not None else None
        if found is None:
            return error_reply(404, "NotFound", "No function matches this path")
        if isinstance(found, MethodNotAllowed):
            # The real host answers 404 here (azure-functions-host#10098); 405 + Allow is what HTTP asks for.
            allow = (("Allow", ", ".join(found.allowed)),)
            return error_reply(
                405, "MethodNotAllowed", "This function does not take this method", headers=allow
            )
        function = found.target
        assert isinstance(function.trigger, HttpTrigger)
        if not authorized(function.trigger.auth_level, incoming.presented_key, self._keys):
            return error_reply(
                401, "Unauthorized", "A valid function key is required (x-functions-key or ?code=)"
            )
        body = incoming.read_body(self._max_request_bytes)
        if isinstance(body, Reply):
            return body
        request = func.HttpRequest(
            method=incoming.method,
            url=self._request_url(incoming),
            headers=joined_headers(incoming.handler.headers.items()),
            params=dict(reversed(incoming.query)),  # the first value of a repeated name wins
            route_params=found.route_params,
            body=body,
        )
        invocation_id = str(uuid.uuid4())
        failed = error_reply(
            500, "InternalServerError", "The function failed; see the host log.", invocationId=invocation_id
        )
        try:
            result = self._invoker.invoke(function, request, invocation_id)
        except Exception:  # logged, with its traceback, by the invoker; the client learns nothing more
            return failed
        try:
            return http_reply(result)
        except TypeError as error:
            logger.error("Function '%s' (Id=%s): %s", function.name, invocation_id, error)
            return failed

    def _write(self, incoming: Incoming, reply: Reply) -> None:
        handler = incoming.handler
        close = incoming.must_close or incoming.body_pending or self._stopping
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers:
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            if close:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            if incoming.method != "HEAD" and reply.body:
                handler.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _without_prefix(self, path: str) -> str | None:
        prefix = self._config.route_prefix
        if not prefix:
            return path
        head = "/" + prefix.lower()
        lowered = path.lower()
        if lowered == head:
            return ""
        if lowered.startswith(head + "/"):
            return path[len(head) :]
        return None

    def _request_url(self, incoming: Incoming) -> str:
        host = incoming.handler.headers.get("Host") or self.base_url.removeprefix("http://")
        return f"http://{host}{incoming.handler.path}"

    # admin API

    def _admin(self, incoming: Incoming, tail: str) -> Reply:
        method = incoming.method
        if tail == "/host/ping":
            return Reply(200)
        if not authorized(AuthLevel.ADMIN, incoming.presented_key, self._keys):
            return error_reply(401, "Unauthorized", "The master key is required")
        if tail == "/host/status" and method == "GET":
            return json_reply(200, self.status())
        if tail == "/functions" and method == "GET":
            return json_reply(200, [self._describe(function) for function in self._index.functions])
        if tail.startswith("/functions/"):
            function = self._by_name.get(unquote(tail[len("/functions/") :]).lower())
            if function is None:
                return error_reply(404, "NotFound", "No such function")
            if method == "GET":
                return json_reply(200, self._describe(function))
            if method == "POST":
                return self._admin_invoke(incoming, function)
        return error_reply(404, "NotFound", "No such admin endpoint")

    def _admin_invoke(self, incoming: Incoming, function: IndexedFunction) -> Reply:
        body = incoming.read_body(self._max_request_bytes)
        if isinstance(body, Reply):
            return body
        try:
            document = json.loads(body or b"{}")
            if not isinstance(document, dict):
                raise ValueError("not an object")
            text = document.get("input") or ""
            if not isinstance(text, str):
                raise ValueError("input is not a string")
        except ValueError:
            return error_reply(400, "BadRequest", 'The body must be JSON like {"input": "..."}')
        trigger_value: object
        if isinstance(function.trigger, TimerTrigger):
            runner = self._timers[function.name]
            trigger_value = runner.timer_request(past_due=False)
        elif isinstance(function.trigger, QueueTrigger):
            now = datetime.now(UTC)
            trigger_value = trigger_message_for(
                id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1, insertion_time=now
            )
        else:
            return error_reply(400, "BadRequest", "HTTP functions are invoked over their route")
        self._invoker.in_flight.enter()
        self._admin_pool.submit(self._invoke_in_background, function, trigger_value)
        return Reply(202)

    def _invoke_in_background(self, function: IndexedFunction, trigger_value: object) -> None:
        try:
            self._invoker.invoke(function, trigger_value)
        except Exception:  # logged by the invoker
            return
        finally:
            self._invoker.in_flight.leave()

    # helpers

    def _queue_handler(self, function: IndexedFunction) -> Callable[[func_queue.QueueMessage], None]:
        def handle(message: func_queue.QueueMessage) -> None:
            self._invoker.invoke(function, message)

        return handle

    def _describe(self, function: IndexedFunction) -> dict[str, Any]:
        described: dict[str, Any] = {"name": function.name, "trigger": function.trigger_type}
        trigger = function.trigger
        if isinstance(trigger, HttpTrigger):
            prefix = f"/{self._config.route_prefix}" if self._config.route_prefix else ""
            described |= {
                "route": trigger.route.text,
                "url": f"{self.base_url}{prefix}/{trigger.route.text}",
                "methods": list(trigger.methods) if trigger.methods else None,
                "authLevel": trigger.auth_level.value,
            }
        elif isinstance(trigger, QueueTrigger):
            described |= {"queueName": trigger.queue_name}
        else:
            runner = self._timers.get(function.name)
            next_run = runner.next_run if runner is not None else None
            next_run = next_run or trigger.schedule.next_after(datetime.now(UTC))
            described |= {
                "schedule": trigger.schedule.expression,
                "runOnStartup": trigger.run_on_startup,
                "nextRun": next_run.isoformat(),
            }
        if function.outputs:
            described["queueOutputs"] = [output.queue_name for output in function.outputs]
        return described

    def _log_functions(self) -> None:
        for line in _function_lines(self._describe(function) for function in self._index.functions):
            logger.info("%s", line)
        for name, error in self._index.errors.items():
            logger.error("  %s: NOT LOADED: %s", name, error)


def _function_lines(described: Iterable[dict[str, Any]]) -> list[str]:
    lines = ["Functions:"]
    for item in described:
        if item["trigger"] == "httpTrigger":
            methods = ",".join(item["methods"] or ["*"])
            lines.append(f"  {item['name']}: [{methods}] {item['url']} ({item['authLevel']})")
        elif item["trigger"] == "queueTrigger":
            lines.append(f"  {item['name']}: queueTrigger on {item['queueName']}")
        else:
            lines.append(f"  {item['name']}: timerTrigger {item['schedule']!r}, next {item['nextRun']}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app", type=Path, default=Path("function_app.py"), help="the app file (function_app.py)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="a local.settings.json-style file (default: local.settings.json beside the app, if any)",
    )
    parser.add_argument("--host-json", type=Path, default=None, help="host.json (default: beside the app)")
    parser.add_argument(
        "--keys-file", type=Path, default=None, help="where to write the function and master keys"
    )
    parser.add_argument(
        "--shutdown-grace", type=float, default=10.0, help="seconds in-flight invocations get at shutdown"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    """``python -m devkit host``: run until SIGTERM/SIGINT; 0 after a clean stop, 1 if start-up failed."""
    _configure_logging(args.log_level)
    stop = threading.Event()
    _install_signal_handlers(stop)
    scratch: Path | None = None
    keys_file: Path | None = args.keys_file
    if keys_file is None:
        scratch = Path(tempfile.mkdtemp(prefix="devkit-host-"))
        keys_file = scratch / "keys.json"
    try:
        host = _start(args, keys_file)
    except (HostConfigError, AppLoadError, AzureError, OSError) as error:
        logger.error("devkit host could not start: %s", error)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        return 1
    print(f"{KEYS_FILE_LINE}{keys_file}", flush=True)
    print(f"{LISTENING_LINE}{host.base_url}", flush=True)
    logger.info("devkit host running at %s (Ctrl-C or SIGTERM stops it)", host.base_url)
    while not stop.wait(0.2):
        pass
    logger.info("devkit host stopping")
    idle = host.stop(args.shutdown_grace)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if not idle:
        logger.warning("devkit host stopped with invocations still running after %.0fs", args.shutdown_grace)
        logging.shutdown()
        os._exit(0)  # threads still inside user code would block a normal exit
    logger.info("devkit host stopped")
    return 0


def _start(args: argparse.Namespace, keys_file: Path) -> FunctionsHost:
    """Settings into the environment, host.json, bind, import + index the app, keys, queues; then serve."""
    app_path = args.app.resolve()
    if not app_path.is_file():
        raise HostConfigError(f"no app file at {app_path}")
    os.environ.update(_load_settings(args.settings, app_path))
    os.environ.setdefault("FUNCTIONS_WORKER_RUNTIME", "python")
    os.environ.setdefault("AzureWebJobsScriptRoot", str(app_path.parent))
    config = load_host_json(args.host_json.resolve() if args.host_json else app_path.parent / "host.json")
    max_request_bytes = _body_limit(os.environ)
    server = HttpServer((args.host, args.port))
    try:
        os.environ.setdefault("WEBSITE_HOSTNAME", f"{args.host}:{server.server_address[1]}")
        index = index_functions(load_function_app(app_path), dict(os.environ), config, str(app_path.parent))
        keys = HostKeys.from_settings(os.environ)
        keys.write(keys_file)
        host = FunctionsHost(
            index=index, config=config, keys=keys, max_request_bytes=max_request_bytes, server=server
        )
    except BaseException:
        server.server_close()
        raise
    try:
        host.start()
    except BaseException:
        host.stop(grace=0)
        raise
    return host


def _load_settings(settings_path: Path | None, app_path: Path) -> dict[str, str]:
    if settings_path is None:
        default = app_path.parent / "local.settings.json"
        file_values = load_settings_file(default) if default.exists() else {}
    else:
        file_values = load_settings_file(settings_path.resolve())
    return merge_settings(file_values, os.environ)


def _body_limit(settings: Mapping[str, str]) -> int:
    text = settings.get(BODY_LIMIT_SETTING, "").strip()
    if not text:
        return DEFAULT_MAX_REQUEST_BYTES
    if not text.isdigit() or int(text) <= 0:
        raise HostConfigError(f"{BODY_LIMIT_SETTING} must be a positive number of bytes, got {text!r}")
    return int(text)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # The storage SDK logs every request at INFO; polling would drown the invocation lines.
    logging.getLogger("azure").setLevel(logging.WARNING)


def _install_signal_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(1)  # a second Ctrl-C: stop now
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
