"""v1 request signatures: the canonical string, the ``X-Sync-*`` headers, the verifier and its replay window.

An implementation of its own: never import sync_core here, so that a bug in the service's client cannot hide
behind a shared helper.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable

from devkit.crm_emulator.errors import ContractError

REPLAY_WINDOW_SECONDS = 300

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")


def canonical_string(timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes) -> str:
    """The string a v1 signature covers (docs/crm-contract.md §3.2)."""
    return "\n".join((timestamp, nonce, method.upper(), path_with_query, hashlib.sha256(body).hexdigest()))


def compute_signature(secret: str, canonical: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``canonical`` keyed with the UTF-8 bytes of ``secret``."""
    return hmac.new(secret.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def signature_headers(
    secret: str, method: str, path_with_query: str, body: bytes, *, now: float, nonce: str | None = None
) -> dict[str, str]:
    """The three ``X-Sync-*`` headers for one request; a fresh nonce unless one is given."""
    timestamp = str(int(now))
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    signature = compute_signature(secret, canonical_string(timestamp, nonce, method, path_with_query, body))
    return {"X-Sync-Timestamp": timestamp, "X-Sync-Nonce": nonce, "X-Sync-Signature": f"v1={signature}"}


class SignatureVerifier:
    """Checks v1 signatures in the documented order and remembers accepted nonces (thread-safe)."""

    def __init__(
        self,
        secret: str,
        *,
        window_seconds: int = REPLAY_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # nonce → when it may be forgotten
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()

    def verify(
        self,
        *,
        method: str,
        path_with_query: str,
        body: bytes,
        timestamp: str | None,
        nonce: str | None,
        signature: str | None,
    ) -> None:
        """Return when the request is authentic; raise ``ContractError`` (401) naming the first failure."""
        if timestamp is None or nonce is None or signature is None:
            raise ContractError(
                401, "missing_signature", "X-Sync-Timestamp, X-Sync-Nonce and X-Sync-Signature are required"
            )
        candidates = [
            entry.strip()[3:].lower()
            for entry in signature.split(",")
            if entry.strip().startswith("v1=") and _HEX64.match(entry.strip()[3:])
        ]
        if not _TIMESTAMP.match(timestamp) or not _NONCE.match(nonce) or not candidates:
            raise ContractError(
                401, "malformed_signature", "a signature header is not in the documented form"
            )
        now = self._clock()
        if abs(now - int(timestamp)) > self._window:
            raise ContractError(401, "stale_timestamp", f"the timestamp is more than {self._window} s off")
        expected = compute_signature(
            self._secret, canonical_string(timestamp, nonce, method, path_with_query, body)
        )
        matched = False
        for candidate in candidates:  # compare every entry: no early exit on a match
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise ContractError(401, "invalid_signature", "the signature does not match the request")
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.pop(self._expiry.popleft()[1], None)
            if nonce in self._seen:
                raise ContractError(401, "replayed_nonce", "this nonce was already used")
            forget_at = now + 2 * self._window
            self._seen[nonce] = forget_at
            self._expiry.append((forget_at, nonce))

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self._expiry.clear()
