"""HTTP for the local Functions host: keys, request reading with a size limit, response mapping, the server.

Terminology:
- *function key*: accepted by FUNCTION-level functions, in the ``x-functions-key`` header or ``?code=``.
- *master key*: accepted everywhere, and the only key for ADMIN-level functions and the admin API.
Keys are compared in constant time. Request lines are never logged: they can carry ``?code=`` keys.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from azure.functions import _abc as func_abc

from devkit.host_index import AuthLevel

FUNCTION_KEY_SETTING = "DEVKIT_FUNCTION_KEY"
MASTER_KEY_SETTING = "DEVKIT_MASTER_KEY"
KEY_HEADER = "x-functions-key"
_DRAIN_LIMIT = 1 << 20  # read (and drop) up to this much of a too-large body so the 413 reaches the client


class RequestHandlerHost(Protocol):
    def handle(self, handler: BaseHTTPRequestHandler) -> None: ...


@dataclass(frozen=True)
class HostKeys:
    function_key: str = field(repr=False)
    master_key: str = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> HostKeys:
        return cls(
            function_key=settings.get(FUNCTION_KEY_SETTING) or secrets.token_urlsafe(32),
            master_key=settings.get(MASTER_KEY_SETTING) or secrets.token_urlsafe(32),
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({"functionKey": self.function_key, "masterKey": self.master_key}, handle)


def _same_key(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def authorized(level: AuthLevel, presented: str | None, keys: HostKeys) -> bool:
    """ANONYMOUS: anyone; FUNCTION: the function key or the master key; ADMIN: the master key only."""
    if level is AuthLevel.ANONYMOUS:
        return True
    if not presented:
        return False
    if _same_key(presented, keys.master_key):
        return True
    return level is AuthLevel.FUNCTION and _same_key(presented, keys.function_key)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload).encode("utf-8")
    return Reply(status, body, (("Content-Type", "application/json; charset=utf-8"), *headers))


def error_reply(
    status: int, code: str, message: str, *, headers: tuple[tuple[str, str], ...] = (), **extra: str
) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message, **extra}}, headers)


class Incoming:
    """One request as the host sees it; tracks whether its body has been read off the connection."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.handler = handler
        self.method = handler.command.upper()
        parts = urlsplit(handler.path)
        self.path = parts.path or "/"
        self.query = parse_qsl(parts.query, keep_blank_values=True)
        self.body_pending = "chunked" in handler.headers.get("Transfer-Encoding", "").lower() or (
            handler.headers.get("Content-Length", "0").strip() not in {"", "0"}
        )
        self.must_close = False

    @property
    def presented_key(self) -> str | None:
        header = self.handler.headers.get(KEY_HEADER)
        if header:
            return header
        return next((value for name, value in self.query if name == "code"), None)

    def read_body(self, limit: int) -> bytes | Reply:
        """The request body, or the reply to send instead (400 malformed, 413 too large)."""
        self.body_pending = False
        headers = self.handler.headers
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        text = headers.get("Content-Length")
        if text is None:
            return b""
        try:
            length = int(text)
            if length < 0:
                raise ValueError(text)
        except ValueError:
            self.must_close = True
            return error_reply(400, "BadRequest", "Content-Length is not a number")
        if length > limit:
            if length <= limit + _DRAIN_LIMIT:
                self._discard(length)
            else:
                self.must_close = True
            return error_reply(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes")
        return self.handler.rfile.read(length)

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.handler.rfile.read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)

    def _read_chunked(self, limit: int) -> bytes | Reply:
        rfile = self.handler.rfile
        chunks: list[bytes] = []
        total = 0
        while True:
            line = rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.must_close = True
                return error_reply(400, "BadRequest", "Malformed chunked body")
            if size == 0:
                while rfile.readline(1024) not in {b"\r\n", b"\n", b""}:
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                self.must_close = True
                return error_reply(413, "PayloadTooLarge", f"The request body is larger than {limit} bytes")
            chunks.append(rfile.read(size))
            rfile.readline(1024)


class HttpServer(ThreadingHTTPServer):
    """Bound (so the port is known) before the app is imported; serves once a FunctionsHost takes it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.host: RequestHandlerHost | None = None
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "devkit-functions-host"
    sys_version = ""
    timeout = 120  # seconds an idle keep-alive connection stays open

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm holds the body
        # until the client's delayed ACK (~40 ms) arrives. The real host answers without that delay.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def _serve(self) -> None:
        host = self.server.host
        if host is None:
            self.send_error(503)
            return
        host.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines carry ?code= keys: the host never logs them; invocations are logged instead.
        return


def http_reply(result: object) -> Reply:
    """Map what an HTTP function returned to a reply, as the worker's HttpResponseConverter does."""
    if isinstance(result, func_abc.HttpResponse):
        headers = [(name, value) for name, value in result.headers.items(lower=False)]
        if not any(name.lower() == "content-type" for name, _ in headers):
            mimetype = result.mimetype
            content_type = (
                f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
            )
            headers.append(("Content-Type", content_type))
        headers = [
            (n, v)
            for n, v in headers
            if n.lower() not in {"content-length", "transfer-encoding", "connection"}
        ]
        return Reply(result.status_code, result.get_body() or b"", tuple(headers))
    if isinstance(result, str):
        return Reply(200, result.encode("utf-8"), (("Content-Type", "text/plain; charset=utf-8"),))
    if result is None:
        return Reply(204)
    raise TypeError(f"an HTTP function must return HttpResponse or str, not {type(result).__name__}")


def joined_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers for ``func.HttpRequest``: names lower-cased, repeated ones joined with ', '."""
    joined: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined
