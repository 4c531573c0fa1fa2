"""Request signatures of the CRM contract, scheme ``v1`` (docs/crm-contract.md §3.2): pure, no I/O.

Terminology
-----------
canonical string
    ``{timestamp}\\n{nonce}\\n{METHOD}\\n{path-with-query}\\n{sha256-hex-of-body}``: what the HMAC covers. The
    path is the request target exactly as sent (base path included, percent-encoding untouched).
nonce
    A per-request random string. The receiver remembers accepted nonces for ``NONCE_MEMORY_SECONDS`` (the
    whole ±``REPLAY_WINDOW_SECONDS`` window) and refuses a second use: that memory is the caller's job (a
    shared store), because it is state; this module only decides whether a request is authentic.
rotation
    A signer may send several comma-separated ``v1=`` entries; a request is authentic when any entry matches
    any secret the verifier holds.

Verification follows the contract's order, and the first failure decides the answer (every one is a 401):
missing header → malformed header → stale timestamp → no matching signature. Replayed nonces come last, from
the caller's store, and only for requests whose signature verified (so forgeries cannot burn nonces).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TIMESTAMP_HEADER = "X-Sync-Timestamp"
NONCE_HEADER = "X-Sync-Nonce"
SIGNATURE_HEADER = "X-Sync-Signature"
REPLAY_WINDOW_SECONDS = 300
NONCE_MEMORY_SECONDS = 2 * REPLAY_WINDOW_SECONDS

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_SCHEME_PREFIX = "v1="


class SignatureFailure(enum.Enum):
    """Why a request is not authentic; the value is the contract's error code."""

    MISSING = "missing_signature"
    MALFORMED = "malformed_signature"
    STALE = "stale_timestamp"
    INVALID = "invalid_signature"
    REPLAYED = "replayed_nonce"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    SignatureFailure.MISSING: "X-Sync-Timestamp, X-Sync-Nonce and X-Sync-Signature are required",
    SignatureFailure.MALFORMED: "a signature header is not in the documented form",
    SignatureFailure.STALE: f"the timestamp is more than {REPLAY_WINDOW_SECONDS} s off",
    SignatureFailure.INVALID: "the signature does not match the request",
    SignatureFailure.REPLAYED: "this nonce was already used",
}


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers, plus the three headers as received (None when absent)."""

    method: str
    path_with_query: str
    body: bytes
    timestamp: str | None
    nonce: str | None
    signature: str | None

    @classmethod
    def from_headers(
        cls, method: str, path_with_query: str, body: bytes, headers: Mapping[str, str]
    ) -> SignedRequest:
        lowered = {name.lower(): value for name, value in headers.items()}
        return cls(
            method=method,
            path_with_query=path_with_query,
            body=body,
            timestamp=lowered.get(TIMESTAMP_HEADER.lower()),
            nonce=lowered.get(NONCE_HEADER.lower()),
            signature=lowered.get(SIGNATURE_HEADER.lower()),
        )


def canonical_string(timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{nonce}\n{method.upper()}\n{path_with_query}\n{digest}"


def compute_signature(secret: str, canonical: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``canonical``, keyed with the UTF-8 bytes of ``secret`` as written."""
    return hmac.new(secret.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def signature_headers(
    secret: str, method: str, path_with_query: str, body: bytes, *, now: float, nonce: str
) -> dict[str, str]:
    """The three ``X-Sync-*`` headers for one attempt (sign every attempt afresh, with a fresh nonce)."""
    timestamp = str(int(now))
    signature = compute_signature(secret, canonical_string(timestamp, nonce, method, path_with_query, body))
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: _SCHEME_PREFIX + signature}


def check_signature(request: SignedRequest, secrets: Sequence[str], now: float) -> SignatureFailure | None:
    """None when the request is authentic (its nonce still to be remembered), else the first failure."""
    if request.timestamp is None or request.nonce is None or request.signature is None:
        return SignatureFailure.MISSING
    candidates = [
        entry.strip()[len(_SCHEME_PREFIX) :].lower()
        for entry in request.signature.split(",")
        if entry.strip().startswith(_SCHEME_PREFIX) and _HEX64.match(entry.strip()[len(_SCHEME_PREFIX) :])
    ]
    if not _TIMESTAMP.match(request.timestamp) or not _NONCE.match(request.nonce) or not candidates:
        return SignatureFailure.MALFORMED
    if abs(now - int(request.timestamp)) > REPLAY_WINDOW_SECONDS:
        return SignatureFailure.STALE
    canonical = canonical_string(
        request.timestamp, request.nonce, request.method, request.path_with_query, request.body
    )
    matched = False
    for secret in secrets:
        expected = compute_signature(secret, canonical)
        for candidate in candidates:  # every pair is compared: no early exit that timing could reveal
            matched |= hmac.compare_digest(expected, candidate)
    return None if matched else SignatureFailure.INVALID
