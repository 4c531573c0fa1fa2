"""The CRM's state: users, accounts, contacts, leads, activities, events, request log, idempotency."""

from __future__ import annotations

import copy
import hmac
import itertools
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from devkit.crm_emulator.errors import ContractError, _invalid
from devkit.crm_emulator.payloads import (
    _EVENT_DETAILS,
    _REQUIRED_ON_CREATE,
    ACTIVITY_FIELDS,
    Json,
    _activity_defaults,
    _EventInput,
    _FailureInput,
    _Seed,
    _validate,
)
from devkit.crm_emulator.routing import _Request, _Response
from devkit.crm_emulator.validation import _EMAIL, _ID, ActivityRules, _parse_date_time

log = logging.getLogger(__name__)

MAX_PEOPLE_EMAILS = 50

_INJECTABLE = {429: "throttled", 500: "internal", 502: "bad_gateway", 503: "unavailable", 504: "timeout"}


def _iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _StoredResponse:
    fingerprint: str
    response: _Response


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: int | None
    method: str | None
    path: str | None

    def applies(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path is None or path.startswith(self.path))
        )


class CrmStore(ActivityRules):
    """What the CRM holds, the Python API to seed it, inspect it and act as its users, and bookkeeping.

    ``CrmEmulator.__init__`` sets up the lock, the sequence and the clock; ``_clear`` (re)creates the rest.
    """

    _lock: threading.RLock
    _sequence: itertools.count[int]
    _clock: Callable[[], float]

    def _clear(self) -> None:
        self._users: dict[str, Json] = {}
        self._accounts: dict[str, Json] = {}
        self._contacts: dict[str, Json] = {}
        self._leads: dict[str, Json] = {}
        self._activities: dict[str, Json] = {}
        self._events: list[Json] = []
        self._requests: list[Json] = []
        self._idempotency: dict[str, _StoredResponse] = {}
        self._failures: list[_Failure] = []

    # -- seeding and inspection -----------------------------------------------------------------------------

    def seed(self, data: Mapping[str, Any]) -> Json:
        """Add (or replace, by id) users, accounts, contacts, leads; accounts go first for the contacts."""
        seed = _validate(_Seed, dict(data))
        assert isinstance(seed, _Seed)
        created: Json = {"users": [], "accounts": [], "contacts": [], "leads": []}
        with self._lock:
            for index, account in enumerate(seed.accounts):
                crm_id = self._new_or_given_id(account.crm_id, "acc", f"accounts.{index}.crmId")
                self._accounts[crm_id] = {"crmId": crm_id, "name": account.name}
                created["accounts"].append(dict(self._accounts[crm_id]))
            for index, user in enumerate(seed.users):
                self._check_seed_email(user.email, f"users.{index}.email")
                crm_user_id = self._new_or_given_id(user.crm_user_id, "usr", f"users.{index}.crmUserId")
                self._users[crm_user_id] = {"crmUserId": crm_user_id, "email": user.email, "name": user.name}
                created["users"].append(dict(self._users[crm_user_id]))
            for index, contact in enumerate(seed.contacts):
                self._check_seed_email(contact.email, f"contacts.{index}.email")
                if contact.account_id is not None and contact.account_id not in self._accounts:
                    raise _invalid({f"contacts.{index}.accountId": "unknown account"})
                crm_id = self._new_or_given_id(contact.crm_id, "con", f"contacts.{index}.crmId")
                self._contacts[crm_id] = {
                    "crmId": crm_id,
                    "email": contact.email,
                    "name": contact.name,
                    "accountId": contact.account_id,
                }
                created["contacts"].append(self._contact_json(self._contacts[crm_id]))
            for index, lead in enumerate(seed.leads):
                self._check_seed_email(lead.email, f"leads.{index}.email")
                crm_id = self._new_or_given_id(lead.crm_id, "lead", f"leads.{index}.crmId")
                self._leads[crm_id] = {
                    "crmId": crm_id,
                    "email": lead.email,
                    "name": lead.name,
                    "company": lead.company,
                }
                created["leads"].append(dict(self._leads[crm_id]))
        return created

    def add_user(self, crm_user_id: str, email: str, name: str | None = None) -> Json:
        user: Json = self.seed({"users": [{"crmUserId": crm_user_id, "email": email, "name": name}]})[
            "users"
        ][0]
        return user

    def add_account(self, name: str, crm_id: str | None = None) -> Json:
        account: Json = self.seed({"accounts": [{"crmId": crm_id, "name": name}]})["accounts"][0]
        return account

    def add_contact(
        self, email: str, name: str | None = None, account_id: str | None = None, crm_id: str | None = None
    ) -> Json:
        contact: Json = self.seed(
            {"contacts": [{"crmId": crm_id, "email": email, "name": name, "accountId": account_id}]}
        )["contacts"][0]
        return contact

    def add_lead(
        self, email: str, name: str | None = None, company: str | None = None, crm_id: str | None = None
    ) -> Json:
        lead: Json = self.seed(
            {"leads": [{"crmId": crm_id, "email": email, "name": name, "company": company}]}
        )["leads"][0]
        return lead

    def people(self) -> Json:
        with self._lock:
            return {
                "users": [dict(user) for user in self._users.values()],
                "accounts": [dict(account) for account in self._accounts.values()],
                "contacts": [self._contact_json(contact) for contact in self._contacts.values()],
                "leads": [dict(lead) for lead in self._leads.values()],
            }

    def activities(self, owner_crm_user_id: str | None = None) -> list[Json]:
        with self._lock:
            return [
                copy.deepcopy(activity)
                for activity in self._activities.values()
                if owner_crm_user_id is None or activity["ownerCrmUserId"] == owner_crm_user_id
            ]

    def activity(self, crm_id: str) -> Json | None:
        with self._lock:
            found = self._activities.get(crm_id)
            return None if found is None else copy.deepcopy(found)

    def events(self, event_type: str | None = None, crm_user_id: str | None = None) -> list[Json]:
        with self._lock:
            return [
                copy.deepcopy(event)
                for event in self._events
                if (event_type is None or event["type"] == event_type)
                and (crm_user_id is None or event["crmUserId"] == crm_user_id)
            ]

    def request_log(self) -> list[Json]:
        """Every contract request: method, target, status, error code, idempotency key; no bodies."""
        with self._lock:
            return [dict(entry) for entry in self._requests]

    # -- acting as the CRM's users --------------------------------------------------------------------------

    def create_as_user(self, activity: Mapping[str, Any]) -> Json:
        """Create an activity as a person in the CRM would (no idempotency key, no signature)."""
        with self._lock:
            return self._create_activity(dict(activity))

    def edit_as_user(self, crm_id: str, changes: Mapping[str, Any]) -> Json:
        """Change an activity as a person in the CRM would: any writable field, owner and type included."""
        with self._lock:
            current = self._existing_activity(crm_id)
            return self._update_activity(current, dict(changes), fixed=())

    def delete_as_user(self, crm_id: str) -> None:
        with self._lock:
            self._existing_activity(crm_id)
            del self._activities[crm_id]

    # -- activities -----------------------------------------------------------------------------------------

    def _existing_activity(self, crm_id: str) -> Json:
        found = self._activities.get(crm_id)
        if found is None:
            raise ContractError(404, "activity_not_found", "the activity does not exist")
        return found

    @staticmethod
    def _check_version(current: Json, if_match: str) -> None:
        if not hmac.compare_digest(if_match.encode("utf-8"), str(current["version"]).encode("utf-8")):
            raise ContractError(
                412,
                "version_mismatch",
                "the activity changed since that version",
                {"currentVersion": current["version"]},
            )

    def _create_activity(self, body: Json) -> Json:
        changes = self._activity_changes(body, fixed=None)
        activity = {**_activity_defaults(), **changes}
        for name in _REQUIRED_ON_CREATE:
            activity.setdefault(name, None)
        errors = self._activity_errors(activity)
        if errors:
            raise _invalid(errors, "the activity is invalid")
        crm_id = "act-" + secrets.token_hex(6)
        now = _iso_utc(self._clock())
        stored = {
            "crmId": crm_id,
            "version": self._next_version(),
            "createdAt": now,
            "modifiedAt": now,
            **activity,
        }
        self._activities[crm_id] = {name: stored[name] for name in ACTIVITY_FIELDS}
        return copy.deepcopy(self._activities[crm_id])

    def _update_activity(self, current: Json, body: Json, *, fixed: Sequence[str]) -> Json:
        changes = self._activity_changes(body, fixed={name: current[name] for name in fixed})
        activity = {**current, **changes}
        errors = self._activity_errors(activity)
        if errors:
            raise _invalid(errors, "the activity is invalid")
        activity["version"] = self._next_version()
        activity["modifiedAt"] = _iso_utc(self._clock())
        self._activities[current["crmId"]] = {name: activity[name] for name in ACTIVITY_FIELDS}
        return copy.deepcopy(self._activities[current["crmId"]])

    def _next_version(self) -> str:
        return str(next(self._sequence))

    # -- people and events ----------------------------------------------------------------------------------

    def _look_up_people(self, query: str) -> Json:
        params = parse_qs(query, keep_blank_values=True)
        errors = {name: "unknown query parameter" for name in params if name != "email"}
        emails = params.get("email", [])
        if not emails:
            errors["email"] = "at least one email is required"
        elif len(emails) > MAX_PEOPLE_EMAILS:
            errors["email"] = f"at most {MAX_PEOPLE_EMAILS} emails per request"
        elif any(not email.strip() for email in emails):
            errors["email"] = "must not be empty"
        if errors:
            raise _invalid(errors)
        wanted = list(dict.fromkeys(email.strip().casefold() for email in emails))

        def matches(records: Mapping[str, Json]) -> list[Json]:
            return [
                record
                for email in wanted
                for record in records.values()
                if str(record["email"]).casefold() == email
            ]

        return {
            "contacts": [self._contact_json(contact) for contact in matches(self._contacts)],
            "leads": [dict(lead) for lead in matches(self._leads)],
            "users": [dict(user) for user in matches(self._users)],
        }

    def _contact_json(self, contact: Json) -> Json:
        account = self._accounts.get(contact["accountId"]) if contact["accountId"] is not None else None
        return {
            "crmId": contact["crmId"],
            "email": contact["email"],
            "name": contact["name"],
            "account": None if account is None else {"crmId": account["crmId"], "name": account["name"]},
        }

    def _record_event(self, body: Json, idempotency_key: str | None) -> None:
        event = _validate(_EventInput, body)
        assert isinstance(event, _EventInput)
        errors: dict[str, str] = {}
        if not _ID.match(event.crm_user_id):
            errors["crmUserId"] = "is not a valid id"
        if _parse_date_time(event.occurred_at) is None:
            errors["occurredAt"] = "must be an RFC 3339 date-time with offset"
        if errors:
            raise _invalid(errors, "the event is invalid")
        _validate(_EVENT_DETAILS[event.type], event.details, prefix="details")
        self._events.append(
            {
                "eventId": f"evt-{next(self._sequence)}",
                "receivedAt": _iso_utc(self._clock()),
                "type": event.type,
                "crmUserId": event.crm_user_id,
                "occurredAt": event.occurred_at,
                "details": event.details,
                "idempotencyKey": idempotency_key,
            }
        )

    # -- bookkeeping ----------------------------------------------------------------------------------------

    def _record(self, request_id: str, request: _Request, response: _Response) -> None:
        code: str | None = None
        if response.status >= 400:
            try:
                code = json.loads(response.body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
        self._requests.append(
            {
                "requestId": request_id,
                "at": _iso_utc(self._clock()),
                "method": request.method,
                "target": request.target,
                "status": response.status,
                "code": code,
                "idempotencyKey": request.header("Idempotency-Key"),
                "replayed": response.replayed,
                "injected": response.injected,
            }
        )
        # The path without its query (it may hold emails); never a body or a header value.
        log.debug("crm emulator: %s %s -> %d %s", request.method, request.path, response.status, code or "-")

    def _add_failure(self, failure: _FailureInput) -> None:
        if failure.status not in _INJECTABLE:
            raise _invalid({"status": f"must be one of {', '.join(map(str, sorted(_INJECTABLE)))}"})
        with self._lock:
            self._failures.append(
                _Failure(
                    failure.count,
                    failure.status,
                    failure.retry_after,
                    failure.method.upper() if failure.method else None,
                    failure.path,
                )
            )

    def _new_or_given_id(self, given: str | None, prefix: str, path: str) -> str:
        if given is None:
            return f"{prefix}-{secrets.token_hex(6)}"
        if not _ID.match(given):
            raise _invalid({path: "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"})
        return given

    @staticmethod
    def _check_seed_email(email: str, path: str) -> None:
        if not _EMAIL.match(email):
            raise _invalid({path: "is not an email address"})
