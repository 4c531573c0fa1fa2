"""A CRM for local development and tests: the outbound side of ``docs/crm-contract.md``, implemented exactly.

The service calls this emulator the way it calls a customer's CRM: signed requests, a Bearer API key,
idempotency keys on writes, ``If-Match`` versions on updates. The emulator holds state (CRM users, accounts,
contacts, leads, activities, the connection events it was sent, a request log), lets a test act "as a CRM
user" (edit or delete an activity, which bumps its version), injects failures, and can play the CRM's part of
calling the service's inbound triggers (``CrmServiceClient``).

Terminology:
    outbound      the service calls the CRM (this emulator serves that side)
    inbound       the CRM calls the service (``CrmServiceClient`` makes those calls)
    signature     HMAC-SHA256 over ``timestamp\\nnonce\\nMETHOD\\npath-with-query\\nsha256(body)``, header
                  ``X-Sync-Signature: v1=<hex>``; checked here with code of its own, never with sync_core's,
                  so a bug in the service's client cannot hide behind a shared helper
    nonce         a per-request random value; one seen again within the window is a replay
    version       an activity's opaque write counter; every write (contract or CRM user) changes it
    idempotency   a write's ``Idempotency-Key``: the same key and request replay the stored 2xx response

Control API (no authentication, loopback only), mirrored by Python methods of ``CrmEmulator``:
    POST   /_devkit/reset                          forget everything (ids and versions keep counting)
    POST   /_devkit/seed                           {users, accounts, contacts, leads} → 201 the records
    GET    /_devkit/people                         every seeded record
    GET    /_devkit/activities[?ownerCrmUserId=]   {"activities": [...]}
    POST   /_devkit/activities                     create as a CRM user → 201 activity
    GET    /_devkit/activities/{crmId}             the activity
    PATCH  /_devkit/activities/{crmId}             edit as a CRM user (may change owner or type) → new version
    DELETE /_devkit/activities/{crmId}             delete as a CRM user → 204
    GET    /_devkit/events[?type=&crmUserId=]      {"events": [...]}
    GET    /_devkit/requests                       {"requests": [...]}: method, target, status; no bodies
    POST   /_devkit/failures                       {count, status, retryAfter, method, path}: fail next

Modules:
    emulator        ``CrmEmulator``: lifecycle, addresses, ``fail_next``, ``reset``, ``service_client``
    store           the state and the Python API over it (seed, inspect, act as a CRM user), bookkeeping
    contract        the outbound API: authentication, injected failures, idempotency, the routes
    control         the ``/_devkit`` control API
    payloads        what an activity holds; pydantic shapes of every request body
    validation      the rules beyond the shape
    signing         v1 signatures and the replay-checking verifier
    routing         requests, responses, JSON bodies, route matching
    server          the threaded HTTP server
    service_client  ``CrmServiceClient``: the CRM calling the service's inbound triggers
    cli             ``python -m devkit crm``
    errors          ``ContractError``
"""

from __future__ import annotations

from devkit.crm_emulator.cli import (
    DEFAULT_API_KEY,
    DEFAULT_PORT,
    DEFAULT_SIGNING_SECRET,
    add_arguments,
    main,
    run,
)
from devkit.crm_emulator.contract import CONTRACT_ROUTES
from devkit.crm_emulator.control import DEVKIT_ROUTES
from devkit.crm_emulator.emulator import MAX_BODY_BYTES, CrmEmulator
from devkit.crm_emulator.errors import ContractError
from devkit.crm_emulator.payloads import ACTIVITY_FIELDS, DayOfWeek, Json
from devkit.crm_emulator.service_client import CrmServiceClient, ServiceResponse
from devkit.crm_emulator.signing import (
    REPLAY_WINDOW_SECONDS,
    SignatureVerifier,
    canonical_string,
    compute_signature,
    signature_headers,
)
from devkit.crm_emulator.store import MAX_PEOPLE_EMAILS

__all__ = [
    "ACTIVITY_FIELDS",
    "CONTRACT_ROUTES",
    "DEFAULT_API_KEY",
    "DEFAULT_PORT",
    "DEFAULT_SIGNING_SECRET",
    "DEVKIT_ROUTES",
    "MAX_BODY_BYTES",
    "MAX_PEOPLE_EMAILS",
    "REPLAY_WINDOW_SECONDS",
    "ContractError",
    "CrmEmulator",
    "CrmServiceClient",
    "DayOfWeek",
    "Json",
    "ServiceResponse",
    "SignatureVerifier",
    "add_arguments",
    "canonical_string",
    "compute_signature",
    "main",
    "run",
    "signature_headers",
]
