"""The HTTP(S) front: a threading HTTP/1.1 server (keep-alive) that hands every request to a dispatcher."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devkit.graph_emulator.routing import Response

logger = logging.getLogger(__name__)
Dispatcher = Callable[[str, str, list[tuple[str, str]], bytes], Response]
MAX_BODY = 50 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GraphEmulator/1.0"
    timeout = 120  # idle keep-alive connections close after this

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        server: EmulatorHTTPServer = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        try:
            response = server.dispatcher(self.command, self.path, list(self.headers.items()), body)
        except Exception:
            logger.exception("emulator failure on %s %s", self.command, self.path.split("?", 1)[0])
            response = Response(
                500, {"error": {"code": "InternalServerError", "message": "Emulator failure."}}
            )
        payload = response.payload()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if isinstance(response.body, dict) and not any(k.lower() == "content-type" for k in response.headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _dispatch  # noqa: N815 - http.server names

    def log_message(self, format: str, *args: Any) -> None:
        # Without the query: skip and delta tokens (and validation tokens) are not for logs.
        logger.debug("%s - %s", self.address_string(), _QUERY.sub("", format % args))


_QUERY = re.compile(r"\?[^ \"]*")


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], dispatcher: Dispatcher, ssl_context: ssl.SSLContext | None
    ) -> None:
        super().__init__(address, _Handler)
        self.dispatcher = dispatcher
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection = request
        if self.ssl_context is not None:  # the TLS handshake runs in the connection's thread, not in accept()
            try:
                connection = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                request.close()
                return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                connection.close()

    def close_connections(self) -> None:
        """Wake keep-alive connection threads so they end (used when stopping)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class ServerThread:
    def __init__(
        self, host: str, port: int, dispatcher: Dispatcher, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.server = EmulatorHTTPServer((host, port), dispatcher, ssl_context)
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="graph-emulator-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()
        self._thread.join(timeout=10)
