"""The HTTP side: requests and responses as the endpoints see them, and the threaded servers."""

from __future__ import annotations

import json
import logging
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from devkit.identity_emulator.emulator import IdentityEmulator

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: Mapping[str, str]
    form: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # for the request log
    error_code: int | None = None


def _json(status: int, payload: object, **kwargs: Any) -> _Response:
    return _Response(status, json.dumps(payload).encode(), **kwargs)


def _first_values(pairs: Mapping[str, list[str]]) -> dict[str, str]:
    return {name: values[0] for name, values in pairs.items() if values}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that does not trust the CA, or hangs up, is not the emulator's failure.
        logger.debug("connection from %s failed: %r", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    emulator: ClassVar[IdentityEmulator]
    channel: ClassVar[str]  # "tls" (everything) or "msi" (the plain-HTTP managed identity endpoint)
    server_version = "devkit-identity"
    sys_version = ""
    timeout = 15

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # handshake here, in the request's own thread
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(_json(413, {"error": "request_too_large"}))
            return
        body = self.rfile.read(length) if length else b""
        form: dict[str, str] = {}
        if "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            form = _first_values(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
        request = _Request(
            method=self.command,
            path=parts.path,
            query=_first_values(parse_qs(parts.query, keep_blank_values=True)),
            form=form,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        self._write(self.emulator._handle(request, self.channel))

    def _write(self, response: _Response) -> None:
        self.close_connection = True
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Connection", "close")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ``IdentityEmulator.handle`` logs one masked line per request."""
