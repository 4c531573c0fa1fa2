"""CRM JSON ⇄ Activity for series (docs/crm-contract.md §2): the shapes, round trips and field errors."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync_core.domain.crm_mapping import activity_from_crm, crm_activity_json, crm_record_from_json
from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.model import (
    Attendee,
    AttendeeKind,
    Field,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
)
from sync_core.errors import InvalidRequestError

BERLIN = ZoneInfo("Europe/Berlin")


def weekly_series(**changes: Any) -> dict[str, Any]:
    """The contract's example series: Mondays and Wednesdays 10:00-11:00 in Berlin, 5 January to 30 March."""
    body: dict[str, Any] = {
        "crmId": "act-1",
        "version": "3",
        "createdAt": "2026-01-02T08:15:00Z",
        "modifiedAt": "2026-01-02T09:00:00Z",
        "ownerCrmUserId": "usr-1",
        "type": "meeting",
        "subject": "Standup",
        "description": None,
        "start": "2026-01-05T10:00:00+01:00",
        "end": "2026-01-05T11:00:00+01:00",
        "timeZone": "Europe/Berlin",
        "isAllDay": False,
        "location": "Room 4.12",
        "isPrivate": False,
        "attendees": [],
        "organizer": None,
        "onlineMeeting": None,
        "requestOnlineMeeting": False,
        "links": {"accountId": None, "contactIds": [], "leadIds": []},
        "recurrence": {
            "pattern": {
                "type": "weekly",
                "interval": 1,
                "daysOfWeek": ["monday", "wednesday"],
                "firstDayOfWeek": "monday",
                "index": "first",
                "dayOfMonth": None,
                "month": None,
            },
            "range": {
                "type": "endDate",
                "startDate": "2026-01-05",
                "endDate": "2026-03-30",
                "numberOfOccurrences": None,
                "recurrenceTimeZone": "Europe/Berlin",
            },
        },
        "occurrenceOverrides": [
            {
                "originalStart": "2026-01-12T10:00:00+01:00",
                "subject": "Standup (planning)",
                "description": None,
                "location": "",
                "start": "2026-01-13T14:00:00+01:00",
                "end": "2026-01-13T15:00:00+01:00",
                "attendees": [
                    {
                        "email": "ada@contoso.com",
                        "name": "Ada Lovelace",
                        "kind": "contact",
                        "type": "required",
                        "response": "none",
                        "crmId": "con-1",
                    }
                ],
            }
        ],
        "cancelledOccurrences": ["2026-01-14T10:00:00+01:00"],
    }
    body.update(changes)
    return body


def test_a_series_with_an_exception_and_a_cancellation_reads_as_the_contract_says() -> None:
    activity = activity_from_crm(weekly_series())
    assert activity.recurrence == Recurrence(
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday"), first_day_of_week="monday"),
        RecurrenceRange(RangeType.END_DATE, date(2026, 1, 5), date(2026, 3, 30), None, "Europe/Berlin"),
    )
    assert activity.occurrence_overrides == (
        OccurrenceOverride(
            original_start=datetime(2026, 1, 12, 9, tzinfo=UTC),
            subject="Standup (planning)",
            location="",
            start=datetime(2026, 1, 13, 13, tzinfo=UTC),
            end=datetime(2026, 1, 13, 14, tzinfo=UTC),
            attendees=(Attendee("ada@contoso.com", "Ada Lovelace", AttendeeKind.CONTACT, crm_id="con-1"),),
        ),
    )
    assert activity.cancelled_occurrences == (datetime(2026, 1, 14, 9, tzinfo=UTC),)


def test_a_series_round_trips_and_is_written_in_its_zone() -> None:
    example = weekly_series()
    activity = activity_from_crm(example)
    body = crm_activity_json(activity)
    for key in ("recurrence", "occurrenceOverrides", "cancelledOccurrences"):
        assert body[key] == example[key], key
    # Keys read from Graph are UTC instants; the CRM gets them in the activity's zone (summer time here).
    from_graph = replace(activity, cancelled_occurrences=(datetime(2026, 3, 30, 8, tzinfo=UTC),))
    assert crm_activity_json(from_graph)["cancelledOccurrences"] == ["2026-03-30T10:00:00+02:00"]
    assert activity_from_crm(example | body) == activity


def test_a_patch_sends_the_series_fields_it_names() -> None:
    activity = activity_from_crm(weekly_series())
    assert set(crm_activity_json(activity, fields=[Field.RECURRENCE])) == {"recurrence"}
    patch = crm_activity_json(activity, fields=[Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES])
    assert patch["cancelledOccurrences"] == ["2026-01-14T10:00:00+01:00"]
    assert len(patch["occurrenceOverrides"]) == 1
    single = replace(activity, recurrence=None, occurrence_overrides=(), cancelled_occurrences=())
    assert crm_activity_json(single, fields=[Field.RECURRENCE, Field.CANCELLED_OCCURRENCES]) == {
        "recurrence": None,
        "cancelledOccurrences": [],
    }
    assert "recurrence" not in crm_activity_json(single)  # a single item's create is as it always was


def test_an_all_day_series_uses_dates() -> None:
    example = weekly_series(
        isAllDay=True,
        start="2026-01-05",
        end="2026-01-06",
        occurrenceOverrides=[{"originalStart": "2026-01-12", "start": "2026-01-13", "end": "2026-01-14"}],
        cancelledOccurrences=["2026-01-14"],
    )
    activity = activity_from_crm(example)
    assert activity.occurrence_overrides == (
        OccurrenceOverride(date(2026, 1, 12), start=date(2026, 1, 13), end=date(2026, 1, 14)),
    )
    assert activity.cancelled_occurrences == (date(2026, 1, 14),)
    assert crm_activity_json(activity)["cancelledOccurrences"] == ["2026-01-14"]


def test_a_value_the_range_type_does_not_use_is_ignored() -> None:
    example = weekly_series()
    example["recurrence"]["range"].update(type="noEnd", numberOfOccurrences=4)
    span = activity_from_crm(example).recurrence
    assert span is not None
    assert (span.range.end_date, span.range.number_of_occurrences) == (None, None)


def test_the_start_date_is_read_in_the_series_zone() -> None:
    # 00:30 in Berlin on 5 January is still 4 January in London, where this series recurs.
    example = weekly_series(start="2026-01-05T00:30:00+01:00", end="2026-01-05T01:00:00+01:00")
    example["recurrence"]["pattern"]["daysOfWeek"] = ["sunday"]
    example["recurrence"]["range"].update(startDate="2026-01-04", recurrenceTimeZone="Europe/London")
    # Sunday 11 January at 23:30 in London is Monday 00:30 in Berlin.
    example.update(occurrenceOverrides=[], cancelledOccurrences=["2026-01-12T00:30:00+01:00"])
    assert activity_from_crm(example).cancelled_occurrences == (datetime(2026, 1, 11, 23, 30, tzinfo=UTC),)


def _with(change: dict[str, Any]) -> dict[str, Any]:
    body = weekly_series()
    for path, value in change.items():
        target: Any = body
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = copy.deepcopy(value)
    return body


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        (
            {"recurrence.pattern.daysOfWeek": ["monday", "monday"]},
            {"recurrence.pattern.daysOfWeek": "must not name a day twice"},
        ),
        (
            {"recurrence.range.startDate": "2026-01-06"},
            {"recurrence.range.startDate": "must be the date the activity starts (in the series' time zone)"},
        ),
        (
            {"occurrenceOverrides.0.originalStart": "2026-01-13T10:00:00+01:00"},  # a Tuesday
            {"occurrenceOverrides.0.originalStart": "is not an occurrence of the series"},
        ),
        (
            {"cancelledOccurrences": ["2026-01-14T11:00:00+01:00"]},  # a Wednesday, at the wrong time
            {"cancelledOccurrences.0": "is not an occurrence of the series"},
        ),
        (
            {"cancelledOccurrences": ["2026-04-01T10:00:00+02:00"]},  # after the end date
            {"cancelledOccurrences.0": "is not an occurrence of the series"},
        ),
        (
            {"cancelledOccurrences": ["2026-01-12T09:00:00Z"]},  # the overridden one, written in UTC
            {"cancelledOccurrences.0": "is also in occurrenceOverrides"},
        ),
        (
            {"cancelledOccurrences": ["2026-01-14T10:00:00+01:00", "2026-01-14T09:00:00Z"]},
            {"cancelledOccurrences.1": "appears twice"},
        ),
        (
            {"occurrenceOverrides.0.end": "2026-01-13T13:00:00+01:00"},
            {"occurrenceOverrides.0.end": "must not be before start"},
        ),
        (
            {"occurrenceOverrides.0.end": None},
            {"occurrenceOverrides.0.start": "start and end come together"},
        ),
        (
            {"recurrence.range.recurrenceTimeZone": "W. Europe Standard Time"},
            {"recurrence.range.recurrenceTimeZone": "must be an IANA time zone name"},
        ),
        (
            {"recurrence.pattern.index": "fifth"},
            {"recurrence.pattern.index": "is not one of the allowed values"},
        ),
        (
            {"occurrenceOverrides.0.attendees.0.email": "nobody"},
            {"occurrenceOverrides.0.attendees.0.email": "is not an email address"},
        ),
    ],
)
def test_series_problems_give_field_errors(change: dict[str, Any], errors: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(_with(change))
    assert raised.value.field_errors == errors


def test_duplicate_original_starts_are_one_instant_whatever_the_offset() -> None:
    body = weekly_series()
    body["occurrenceOverrides"].append({"originalStart": "2026-01-12T09:00:00Z", "subject": "Again"})
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(body)
    assert raised.value.field_errors == {"occurrenceOverrides.1.originalStart": "appears twice"}


def test_overrides_are_kept_in_original_start_order() -> None:
    body = weekly_series(cancelledOccurrences=[])
    body["occurrenceOverrides"].insert(0, {"originalStart": "2026-03-30T10:00:00+02:00", "subject": "Last"})
    activity = activity_from_crm(body)
    assert [o.original_start for o in activity.occurrence_overrides] == [
        datetime(2026, 1, 12, 10, tzinfo=BERLIN),
        datetime(2026, 3, 30, 10, tzinfo=BERLIN),
    ]
    assert activity.occurrence_overrides[1].start is None


def test_the_contracts_series_example_is_valid_and_reads_as_described() -> None:
    contract = (Path(__file__).resolve().parents[2] / "docs" / "crm-contract.md").read_text(encoding="utf-8")
    section = contract[contract.index("## 2. The Activity") : contract.index("## 3. Security")]
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL)]
    series = next(block for block in blocks if block.get("occurrenceOverrides"))
    example = next(block for block in blocks if "crmId" in block)
    activity = activity_from_crm(example | series)
    (override,) = activity.occurrence_overrides
    assert override.original_start == datetime(2026, 1, 12, 9, tzinfo=UTC)
    assert override.start == datetime(2026, 1, 12, 10, tzinfo=UTC)
    assert activity.cancelled_occurrences == (datetime(2026, 1, 14, 9, tzinfo=UTC),)
    assert {key: value for key, value in crm_activity_json(activity).items() if key in series} == series
