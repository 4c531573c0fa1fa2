"""The v1 request signature (docs/crm-contract.md §3.2): the contract's worked examples, and the verifier's
order of checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sync_core.domain.signing import (
    REPLAY_WINDOW_SECONDS,
    SignatureFailure,
    SignedRequest,
    canonical_string,
    check_signature,
    signature_headers,
)

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "crm-contract.md"
SECRET = "unit-test-secret"
NOW = 1_767_225_600.0


def worked_examples() -> list[dict[str, str]]:
    blocks = re.findall(r"```signature-example\n(.*?)```", CONTRACT.read_text(encoding="utf-8"), re.DOTALL)
    examples = []
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name.rstrip(":")] = value
        examples.append(fields)
    assert len(examples) >= 3
    return examples


@pytest.mark.parametrize("example", worked_examples(), ids=lambda e: f"{e['method']} {e['path'][:30]}")
def test_the_contracts_worked_examples(example: dict[str, str]) -> None:
    body = example["body"].encode()
    headers = signature_headers(
        example["secret"],
        example["method"],
        example["path"],
        body,
        now=float(example["timestamp"]),
        nonce=example["nonce"],
    )
    assert headers["X-Sync-Signature"] == example["signature"]
    assert canonical_string(
        example["timestamp"], example["nonce"], example["method"], example["path"], body
    ).endswith(example["body-sha256"])
    signed = SignedRequest.from_headers(example["method"], example["path"], body, headers)
    assert check_signature(signed, [example["secret"]], float(example["timestamp"]) + 299) is None


def signed(method: str = "POST", path: str = "/api/users/u1/connect", body: bytes = b"{}") -> SignedRequest:
    headers = signature_headers(SECRET, method, path, body, now=NOW, nonce="0123456789abcdef0123")
    return SignedRequest.from_headers(method, path, body, {k.lower(): v for k, v in headers.items()})


def test_checks_come_in_the_contracts_order() -> None:
    good = signed()
    assert check_signature(good, [SECRET], NOW) is None
    missing = SignedRequest(
        good.method, good.path_with_query, good.body, good.timestamp, None, good.signature
    )
    assert check_signature(missing, [SECRET], NOW) is SignatureFailure.MISSING
    malformed = SignedRequest(good.method, good.path_with_query, good.body, "12a", good.nonce, good.signature)
    assert check_signature(malformed, [SECRET], NOW) is SignatureFailure.MALFORMED
    short_nonce = SignedRequest(
        good.method, good.path_with_query, good.body, good.timestamp, "abc", good.signature
    )
    assert check_signature(short_nonce, [SECRET], NOW) is SignatureFailure.MALFORMED
    other_scheme = SignedRequest(
        good.method, good.path_with_query, good.body, good.timestamp, good.nonce, "v2=ab"
    )
    assert check_signature(other_scheme, [SECRET], NOW) is SignatureFailure.MALFORMED
    # Stale is decided before the signature: a forged old request says "stale", not "invalid".
    assert check_signature(good, [SECRET], NOW + REPLAY_WINDOW_SECONDS + 1) is SignatureFailure.STALE
    assert check_signature(good, [SECRET], NOW - REPLAY_WINDOW_SECONDS - 1) is SignatureFailure.STALE
    assert check_signature(good, ["another secret"], NOW) is SignatureFailure.INVALID


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"path_with_query": "/api/users/u2/connect"},
        {"path_with_query": "/api/users/u1/connect?x=1"},
        {"body": b'{"purge":true}'},
        {"nonce": "0123456789abcdef0124"},
        {"timestamp": str(int(NOW) + 1)},
    ],
)
def test_anything_signed_that_changes_invalidates_the_signature(change: dict[str, object]) -> None:
    good = signed()
    fields = {**good.__dict__, **change}
    assert check_signature(SignedRequest(**fields), [SECRET], NOW) is SignatureFailure.INVALID


def test_rotation_any_entry_matching_any_secret_is_accepted() -> None:
    good = signed()
    assert good.signature is not None
    old = signature_headers(
        "old", good.method, good.path_with_query, good.body, now=NOW, nonce=good.nonce or ""
    )
    both = f"{good.signature}, {old['X-Sync-Signature']}, v9=whatever"
    rotated = SignedRequest(good.method, good.path_with_query, good.body, good.timestamp, good.nonce, both)
    assert check_signature(rotated, [SECRET], NOW) is None
    assert check_signature(rotated, ["old"], NOW) is None
    assert check_signature(rotated, ["neither"], NOW) is SignatureFailure.INVALID
    upper = SignedRequest(
        good.method,
        good.path_with_query,
        good.body,
        good.timestamp,
        good.nonce,
        good.signature.upper().replace("V1", "v1"),
    )
    assert check_signature(upper, [SECRET], NOW) is None
