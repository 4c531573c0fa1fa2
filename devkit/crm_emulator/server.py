"""The HTTP server: keep-alive connections, bodies read with limits, each request handed to the emulator."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devkit.crm_emulator import control
from devkit.crm_emulator.errors import ContractError
from devkit.crm_emulator.routing import _error_response, _Request, _Response

if TYPE_CHECKING:
    from devkit.crm_emulator.emulator import CrmEmulator

log = logging.getLogger(__name__)

_MAX_DRAIN_BYTES = 64 * 1_048_576


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: CrmEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """End idle keep-alive connections, so their handler threads finish and close their sockets."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CrmEmulator/1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    # Headers and body leave in one segment (the buffer is flushed after each request) and without Nagle's
    # delay: otherwise delayed ACKs add ~40 ms to every response on loopback.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    @property
    def _server(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        emulator = self._server.emulator
        parts = urlsplit(self.path)
        try:
            body = self._read_body(emulator.max_body_bytes)
        except ContractError as exc:
            if exc.status != 413:
                self.close_connection = True  # an unread body must not be taken for the next request
            self._send(_error_response(exc))
            return
        request = _Request(self.command, self.path, parts.path, parts.query, self.headers, body)
        if parts.path == "/_devkit" or parts.path.startswith("/_devkit/"):
            response = control.handle(emulator, request)
        else:
            response = emulator._serve_contract(request)
        self._send(response)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ContractError(411, "length_required", "send the body with Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise ContractError(400, "invalid_request", "Content-Length is not a number") from None
        if length < 0:
            raise ContractError(400, "invalid_request", "Content-Length is negative")
        if length > limit:
            # Read the body away so the client gets to see the 413 rather than a reset connection; a body too
            # large even for that ends the connection instead.
            if length > _MAX_DRAIN_BYTES:
                self.close_connection = True
            else:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise ContractError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        return self.rfile.read(length)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.body and response.status != 204:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are logged by the emulator (without queries); http.server's own lines would carry them.
        pass

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("crm emulator: malformed HTTP request")
