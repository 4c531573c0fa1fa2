"""``CrmEmulator``: the store, the contract and the control API, served over HTTP on a thread of its own."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from devkit.crm_emulator.contract import CONTRACT_ROUTES, ContractApi
from devkit.crm_emulator.control import DEVKIT_ROUTES
from devkit.crm_emulator.payloads import _FailureInput, _validate
from devkit.crm_emulator.routing import _routes
from devkit.crm_emulator.server import _Server
from devkit.crm_emulator.service_client import CrmServiceClient
from devkit.crm_emulator.signing import REPLAY_WINDOW_SECONDS, SignatureVerifier

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576


class CrmEmulator(ContractApi):
    """A stateful CRM over real HTTP on 127.0.0.1; ``start()`` / ``stop()`` or use it as a context manager.

    ``base_url`` is what the service's ``CRM_BASE_URL`` should be (``base_path`` lets a test check that the
    client signs the full path). ``clock`` drives the replay window and the timestamps it writes. Every public
    method is thread-safe and raises ``ContractError`` with the status and code the HTTP API would answer.

    The state and its Python API are ``CrmStore``'s (``store``), the contract routes ``ContractApi``'s
    (``contract``); ``control.handle`` answers ``/_devkit``.
    """

    def __init__(
        self,
        api_key: str,
        signing_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = "",
        clock: Callable[[], float] = time.time,
        replay_window_seconds: int = REPLAY_WINDOW_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if base_path and (not base_path.startswith("/") or base_path.endswith("/")):
            raise ValueError("base_path must start with '/' and not end with one, e.g. '/crm/v1'")
        self._api_key = api_key
        self._signing_secret = signing_secret
        self._host = host
        self._port = port
        self._base_path = base_path
        self._clock = clock
        self.max_body_bytes = max_body_bytes
        self._verifier = SignatureVerifier(signing_secret, window_seconds=replay_window_seconds, clock=clock)
        self._contract_routes = _routes(CONTRACT_ROUTES)
        self._devkit_routes = _routes(DEVKIT_ROUTES)
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)  # versions and request ids; never reset, so never reused
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("the CRM emulator is already running")
        server = _Server((self._host, self._port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="crm-emulator", daemon=True
        )
        self._thread.start()
        log.info("crm emulator listening on %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> CrmEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("the CRM emulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The CRM_BASE_URL for the service under test."""
        return self.origin + self._base_path

    @property
    def devkit_url(self) -> str:
        return self.origin + "/_devkit"

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        retry_after: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` authenticated contract requests (optionally only ``method`` and paths
        starting with ``path``, relative to the base URL) with ``status`` (429, 500, 502, 503, 504).
        429 always carries ``Retry-After`` (default 1 s); 5xx only when ``retry_after`` is given."""
        failure = _validate(
            _FailureInput,
            {"count": count, "status": status, "retryAfter": retry_after, "method": method, "path": path},
        )
        assert isinstance(failure, _FailureInput)
        self._add_failure(failure)

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self._verifier.reset()

    def service_client(self, base_url: str, function_key: str) -> CrmServiceClient:
        """A client that calls the service's inbound triggers as this CRM, signed with this CRM's secret."""
        return CrmServiceClient(base_url, function_key, self._signing_secret, clock=self._clock)
