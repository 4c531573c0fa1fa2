"""What a user's Graph subscriptions need, decided without I/O: renew, recreate, create, or drop a duplicate.

Terminology
-----------
kind
    What a subscription watches (calendar events now; contacts, To Do tasks and mail later). A connected user
    should hold exactly one live subscription of every kind the service syncs.
due
    A subscription expiring before the renewal horizon: the next renewal run plus a safety margin of one more
    interval, so one failed or skipped run never lets a subscription lapse.
lifetime
    How far ahead an expiry is asked for. Graph refuses (400) more than the resource's maximum; the setting
    is tried first, then Graph's known shorter maxima.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sync_core.domain.state import SubscriptionRecord, Versioned

# The renewal timer runs every six hours (RENEWAL_SCHEDULE); when the trigger does not say when it runs next,
# this is assumed. The margin is one more interval: a run that fails or is skipped costs nothing.
DEFAULT_RENEWAL_INTERVAL = timedelta(hours=6)
RENEWAL_MARGIN = timedelta(hours=6)
_LONGEST_SANE_INTERVAL = timedelta(days=7)
# Expiries asked for stay this far below the maximum, so clocks a little apart never exceed Graph's limit.
LIFETIME_MARGIN = timedelta(minutes=1)
# Graph's maxima (minutes): Outlook resources 4,230; with resource data 1,440; presence 60 (graph-facts.md).
_KNOWN_MAXIMA_MINUTES = (4230, 1440, 60)


@dataclass(frozen=True)
class SubscriptionKind:
    name: str  # "events"
    path: str  # under /users/{id}/
    change_types: tuple[str, ...]

    def resource(self, account_oid: str) -> str:
        return f"/users/{account_oid}/{self.path}"

    def owns(self, resource: str) -> bool:
        return resource.rstrip("/").lower().endswith("/" + self.path.lower())


EVENTS = SubscriptionKind("events", "events", ("created", "updated", "deleted"))
# Contacts, To Do and mail join here, through the same code.
KINDS: tuple[SubscriptionKind, ...] = (EVENTS,)


class Step(enum.Enum):
    RENEW = "renew"  # PATCH a new expiry (this also reauthorizes)
    RECREATE = "recreate"  # expired (Graph no longer has it): forget the record, create a new one
    CREATE = "create"  # none of this kind: create one
    DROP = "drop"  # a second live one (two runs raced) or an expired leftover: delete it


@dataclass(frozen=True)
class PlannedStep:
    step: Step
    kind: SubscriptionKind
    record: Versioned[SubscriptionRecord] | None = None


def renewal_horizon(now: datetime, next_run: datetime | None) -> datetime:
    """Subscriptions expiring before this are renewed: the next run (when known and sane) plus the margin."""
    if next_run is None or not now < next_run <= now + _LONGEST_SANE_INTERVAL:
        next_run = now + DEFAULT_RENEWAL_INTERVAL
    return next_run + RENEWAL_MARGIN


def plan_subscriptions(
    records: Sequence[Versioned[SubscriptionRecord]],
    kinds: Sequence[SubscriptionKind],
    now: datetime,
    renew_before: datetime,
) -> tuple[PlannedStep, ...]:
    """The steps that leave one live subscription per kind, none expiring before ``renew_before``.

    Records of kinds not in ``kinds`` are left alone.
    """
    steps: list[PlannedStep] = []
    for kind in kinds:
        mine = [record for record in records if kind.owns(record.value.resource)]
        live = sorted(
            (record for record in mine if record.value.expires_at > now),
            key=lambda record: (record.value.expires_at, record.value.subscription_id),
            reverse=True,
        )
        expired = [record for record in mine if record.value.expires_at <= now]
        if live:
            keep, *duplicates = live
            steps.extend(PlannedStep(Step.DROP, kind, record) for record in (*duplicates, *expired))
            if keep.value.expires_at <= renew_before:
                steps.append(PlannedStep(Step.RENEW, kind, keep))
        elif expired:
            first, *others = expired
            steps.extend(PlannedStep(Step.DROP, kind, record) for record in others)
            steps.append(PlannedStep(Step.RECREATE, kind, first))
        else:
            steps.append(PlannedStep(Step.CREATE, kind))
    return tuple(steps)


def lifetimes_to_try(max_minutes: int) -> tuple[timedelta, ...]:
    """The lifetimes to ask for, longest first: the setting, then Graph's known shorter maxima."""
    minutes = [max_minutes, *(known for known in _KNOWN_MAXIMA_MINUTES if known < max_minutes)]
    return tuple(timedelta(minutes=value) - LIFETIME_MARGIN for value in minutes)
