"""A counting HTTP proxy in front of Azurite's Table endpoint: how many Table Storage transactions a process
made, and of which kind.

The local host runs the app in its own process, so its storage calls cannot be counted by a wrapper in the
benchmark's process. Instead the host's ``AzureWebJobsStorage`` connection string names this proxy as its
``TableEndpoint`` (``TableMeter.connection_string``); the proxy forwards every request unchanged to Azurite
and counts it. Shared Key signatures cover the path, not the host and port, so they still verify. The proxy
runs in a process of its own (``python -m bench.table_meter``), so that it does not compete for the
benchmark process's interpreter lock with the emulators the service is also waiting on.

One HTTP request is one transaction, as Table Storage bills them: a point read, an insert/update/merge/
delete, one page of a query, a table creation, and an entity-group transaction (``$batch``, up to 100
operations on one partition) — the batch counts once; how many operations it carried is noted beside it.
The counts are read (and reset) at ``/_meter`` on the proxy, which is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from devkit.host_process import REPO_ROOT, loopback_session

CONTROL_PATH = "/_meter"
# Headers that belong to one hop, not to the request or answer (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_BATCH_OPERATION = re.compile(rb"^(GET|POST|PUT|PATCH|MERGE|DELETE) https?://[^/\s]+(/[^\s?]*)", re.MULTILINE)
_ENTITY = re.compile(r"^(?P<table>[^(/]+)\((?P<keys>.*)\)$")


@dataclass(frozen=True)
class Transaction:
    """One counted request: ``kind`` is read | query | insert | upsert | delete | batch | table."""

    kind: str
    table: str
    operations: int = 1  # for a batch: how many operations it carried


class TableMeter:
    """``with TableMeter(connection_string) as meter:`` starts the proxy in front of that connection string's
    Table endpoint; give the app ``meter.connection_string``; read ``meter.transactions()`` /
    ``meter.summary()``; ``meter.reset()`` between phases."""

    def __init__(self, connection_string: str, *, startup_timeout: float = 15.0) -> None:
        self._original = connection_string
        self._upstream = _fields(connection_string)["TableEndpoint"]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._session: requests.Session | None = None

    # --- lifecycle ---

    def __enter__(self) -> TableMeter:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.table_meter", "--upstream", self._upstream],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        line = _read_line(self._process.stdout, self._startup_timeout)
        if not line.startswith("listening "):
            self.__exit__()
            raise RuntimeError(f"the table meter did not start: {line!r}")
        self._port = int(line.split()[1])
        self._session = loopback_session()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._session is not None:
            self._session.close()
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    @property
    def connection_string(self) -> str:
        """The original connection string with its TableEndpoint pointing at the proxy."""
        endpoint = f"http://127.0.0.1:{self._port}{urlsplit(self._upstream).path}"
        return ";".join(
            f"TableEndpoint={endpoint}" if part.startswith("TableEndpoint=") else part
            for part in self._original.split(";")
        )

    # --- what was counted ---

    def reset(self) -> None:
        self._control("DELETE")

    def transactions(self) -> list[Transaction]:
        return [Transaction(**item) for item in self._control("GET")]

    def summary(self, strip_prefix: str = "") -> dict[str, int]:
        """Transactions by ``table kind`` (table names without ``strip_prefix``), most first."""
        counts = Counter(f"{t.table.removeprefix(strip_prefix) or '-'} {t.kind}" for t in self.transactions())
        return dict(counts.most_common())

    def _control(self, method: str) -> Any:
        if self._session is None:
            raise RuntimeError("the table meter is not running")
        answer = self._session.request(method, f"http://127.0.0.1:{self._port}{CONTROL_PATH}", timeout=30)
        answer.raise_for_status()
        return answer.json()


# --- the proxy (its own process) --------------------------------------------------------------------------


class _Proxy:
    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self._account_path = target.path.rstrip("/")
        self._upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self._lock = threading.Lock()
        self._counted: list[Transaction] = []
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle's algorithm meets the
                # client's delayed ACK and an answer can wait ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

            def do_PUT(self) -> None:
                proxy.handle(self)

            def do_PATCH(self) -> None:
                proxy.handle(self)

            def do_MERGE(self) -> None:
                proxy.handle(self)

            def do_DELETE(self) -> None:
                proxy.handle(self)

            def do_HEAD(self) -> None:
                proxy.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = _read_body(request)
        if request.path.startswith(CONTROL_PATH):
            self._answer_control(request)
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Content-Length", None)
        if body or request.command in ("POST", "PUT", "PATCH", "MERGE"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.request(request.command, request.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
                break
            except (OSError, http.client.HTTPException):
                self._local.connection = None
                connection.close()
                # Azurite closes idle keep-alive connections (after 5 s): a request that found its reused
                # connection closed never reached it, so it goes once more on a new one.
                if not reused or attempt == 2:
                    request.send_error(502, "Azurite did not answer")
                    return
        self._count(request.command, request.path, body)
        request.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)

    def _answer_control(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            counted = [] if request.command == "DELETE" else [t.__dict__ for t in self._counted]
            if request.command == "DELETE":
                self._counted.clear()
        payload = json.dumps(counted).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to Azurite, and whether it was used before."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        connection = http.client.HTTPConnection(*self._upstream, timeout=30)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.connection = connection
        return connection, False

    def _count(self, method: str, target: str, body: bytes) -> None:
        resource = unquote(urlsplit(target).path).removeprefix(self._account_path).lstrip("/")
        counted: Transaction
        if resource == "$batch":
            operations = _BATCH_OPERATION.findall(body)
            first = unquote(operations[0][1].decode("utf-8", "replace")) if operations else "-"
            table = _table_of(first.removeprefix(self._account_path).lstrip("/"))
            counted = Transaction("batch", table, len(operations))
        elif resource.startswith("Tables"):
            counted = Transaction("table", "-")
        else:
            match = _ENTITY.match(resource)
            table = match.group("table") if match else resource
            if method == "GET":
                counted = Transaction("read" if match and match.group("keys") else "query", table)
            elif method == "DELETE":
                counted = Transaction("delete", table)
            elif method == "POST":
                counted = Transaction("insert", table)
            else:  # PUT / PATCH / MERGE on an entity: update or upsert
                counted = Transaction("upsert", table)
        with self._lock:
            self._counted.append(counted)


def _table_of(resource: str) -> str:
    match = _ENTITY.match(resource)
    return match.group("table") if match else resource


def _fields(connection_string: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)


def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while request.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def _read_line(stream: Any, timeout: float) -> str:
    """The child's first line, or "" when it said nothing within ``timeout`` seconds."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table_meter", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", required=True, help="the Table endpoint, e.g. http://127.0.0.1:10002/acct"
    )
    args = parser.parse_args(argv)
    proxy = _Proxy(args.upstream)
    print(f"listening {proxy.server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        proxy.server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
