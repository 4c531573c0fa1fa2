"""Helpers for tests of (and with) the Graph emulator: access tokens signed by a throw-away key, and a webhook
receiver whose handshake and notification answers can be made right or wrong on purpose.

The real tokens come from the identity emulator; ``TokenMinter`` stands in for it in the emulator's own tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from devkit.jwt import SigningKey

GRAPH_AUDIENCE = "https://graph.microsoft.com"
DEFAULT_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_SCOPES = (
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "Tasks.ReadWrite",
    "Mail.ReadWrite",
    "User.Read",
    "MailboxSettings.Read",
)


class TokenMinter:
    def __init__(self, tenant_id: str = DEFAULT_TENANT, app_id: str | None = None) -> None:
        self.key = SigningKey.generate("test-" + uuid.uuid4().hex[:8])
        self.tenant_id = tenant_id
        self.app_id = app_id or str(uuid.uuid4())

    def jwks(self) -> list[dict[str, str]]:
        return [self.key.jwk()]

    def delegated(
        self,
        user_id: str,
        upn: str | None = None,
        *,
        scopes: Sequence[str] = DEFAULT_SCOPES,
        audience: str = GRAPH_AUDIENCE,
        lifetime: float = 3600,
        name: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "oid": user_id,
            "sub": user_id,
            "tid": self.tenant_id,
            "appid": self.app_id,
            "scp": " ".join(scopes),
            "upn": upn or f"{user_id[:8]}@contoso.onmicrosoft.com",
            "name": name or (upn or user_id).split("@")[0],
        }
        return self.key.sign(claims)

    def application(self, roles: Sequence[str] = ("Calendars.ReadWrite",), *, lifetime: float = 3600) -> str:
        now = int(time.time())
        claims = {
            "aud": GRAPH_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.app_id)),
            "tid": self.tenant_id,
            "appid": self.app_id,
            "roles": list(roles),
        }
        return self.key.sign(claims)


@dataclass
class WebhookBehaviour:
    """How the receiver answers: the handshake (``mode``) and notifications (``status``/``delay``)."""

    mode: str = "ok"  # ok | encoded | wrong-content-type | slow | error
    handshake_delay: float = 0.0
    status: int = 202
    delay: float = 0.0
    fail_first: int = 0  # answer the first N notification POSTs with 500


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


class WebhookReceiver:
    """An HTTP server standing in for the product's webhook; records every notification it accepts or not."""

    def __init__(self) -> None:
        self.behaviour: dict[str, WebhookBehaviour] = {}
        self.received: list[Received] = []
        self.handshakes: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str = "/hook", behaviour: WebhookBehaviour | None = None) -> str:
        self.behaviour[path] = behaviour or WebhookBehaviour()
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def notifications(self, path: str | None = None) -> list[Any]:
        """Every item of every accepted notification POST (to ``path``), in arrival order."""
        with self._lock:
            posts = [r for r in self.received if path is None or r.path == path]
        return [item for post in posts for item in post.body.get("value", [])]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.notifications(path)
            if len(items) >= count:
                return items
            time.sleep(0.02)
        return self.notifications(path)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        behaviour = self.behaviour.get(parsed.path, WebhookBehaviour())
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if "validationToken" in query:
            self._handshake(handler, parsed, query, headers, behaviour)
            return
        record = Received(parsed.path, query, headers, json.loads(raw) if raw else None)
        if behaviour.delay:
            time.sleep(behaviour.delay)
        with self._lock:
            failing = behaviour.fail_first > 0
            if failing:
                behaviour.fail_first -= 1
            else:
                self.received.append(record)
        self._reply(handler, 500 if failing else behaviour.status, b"", "text/plain")

    def _handshake(
        self,
        handler: BaseHTTPRequestHandler,
        parsed: urllib.parse.SplitResult,
        query: dict[str, list[str]],
        headers: dict[str, str],
        behaviour: WebhookBehaviour,
    ) -> None:
        with self._lock:
            self.handshakes.append(Received(parsed.path, query, headers, None))
        token = query["validationToken"][0]  # parse_qs already URL-decoded it
        raw_token = parsed.query.split("validationToken=", 1)[1].split("&", 1)[0]
        if behaviour.handshake_delay or behaviour.mode == "slow":
            time.sleep(behaviour.handshake_delay or 11.0)
        if behaviour.mode == "error":
            self._reply(handler, 500, b"", "text/plain")
        elif behaviour.mode == "encoded":
            self._reply(handler, 200, raw_token.encode(), "text/plain")
        elif behaviour.mode == "wrong-content-type":
            self._reply(handler, 200, json.dumps(token).encode(), "application/json")
        else:
            self._reply(handler, 200, token.encode(), "text/plain; charset=utf-8")

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the emulator gave up waiting (timeout), as Graph does


class GraphClient:
    """A ``requests`` session bound to the emulator's base URL and one access token (close it after use)."""

    def __init__(self, base_url: str, token: str | None, *, verify: str | bool = True) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.verify = verify  # per request: requests lets REQUESTS_CA_BUNDLE override Session.verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("verify", self.verify)
        return self.session.request(method, url, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
