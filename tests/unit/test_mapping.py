"""Graph event JSON ⇄ Activity ⇄ CRM activity JSON, against the documented payloads."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync_core.config import DescriptionPolicy
from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.hashing import HASHED_FIELDS, field_hash
from sync_core.domain.mapping import (
    activity_for_crm,
    activity_from_crm,
    activity_from_graph,
    classify,
    crm_activity_json,
    crm_record_from_json,
    graph_event_body,
    graph_fields_present,
    html_to_text,
    people_from_crm_json,
)
from sync_core.domain.model import (
    Activity,
    ActivityType,
    AllDay,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    AttendeeType,
    Field,
    Organizer,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
    normalize_description,
)
from sync_core.errors import InvalidRequestError

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
LA = ZoneInfo("America/Los_Angeles")
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def body_for(activity: Activity, **options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "for_create": True,
        "now": NOW,
        "description_policy": DescriptionPolicy.ALWAYS,
        "invite_crm_contacts": True,
    }
    settings.update(options)
    return graph_event_body(activity, **settings)


def as_returned_by_graph(body: dict[str, Any], event_id: str = "AAMk-1") -> dict[str, Any]:
    """What Graph would answer for an event created from ``body`` (the properties we read)."""
    event = copy.deepcopy(body)
    event.update({"id": event_id, "type": "singleInstance", "isOrganizer": True, "changeKey": "ck-1"})
    event.setdefault("sensitivity", "normal")
    event.setdefault("isOnlineMeeting", False)
    event.setdefault("attendees", [])
    event.setdefault("location", {"displayName": ""})
    event.setdefault("body", {"contentType": "text", "content": ""})
    for attendee in event["attendees"]:
        attendee["status"] = {"response": "none", "time": "0001-01-01T00:00:00Z"}
    return event


def contract_example() -> dict[str, Any]:
    return {
        "crmId": "act-7f3a9c2e41d0",
        "version": "12",
        "createdAt": "2026-01-02T08:15:00.000Z",
        "modifiedAt": "2026-01-02T09:00:12.345Z",
        "ownerCrmUserId": "usr-1",
        "type": "meeting",
        "subject": "Kick-off",
        "description": "Agenda: scope, plan",
        "start": "2026-01-05T10:00:00+01:00",
        "end": "2026-01-05T11:00:00+01:00",
        "timeZone": "Europe/Berlin",
        "isAllDay": False,
        "location": "Room 4.12",
        "isPrivate": False,
        "attendees": [
            {
                "email": "ada@contoso.com",
                "name": "Ada Lovelace",
                "kind": "contact",
                "type": "required",
                "response": "accepted",
                "crmId": "con-1",
            },
            {
                "email": "erin@example.net",
                "name": None,
                "kind": "external",
                "type": "optional",
                "response": "none",
                "crmId": None,
            },
        ],
        "organizer": None,
        "onlineMeeting": {"joinUrl": "https://teams.microsoft.com/l/meetup-join/abc"},
        "requestOnlineMeeting": True,
        "links": {"accountId": "acc-1", "contactIds": ["con-1"], "leadIds": []},
        "recurrence": None,
        "occurrenceOverrides": [],
        "cancelledOccurrences": [],
    }


def timed(start: datetime, end: datetime, zone: str = "Europe/Berlin", **fields: Any) -> Activity:
    return Activity(subject=fields.pop("subject", "Review"), when=Timed(start, end, zone), **fields)


# --- Graph fixtures → Activity ------------------------------------------------------------------------------


def test_series_master_fixture_maps_with_its_recurrence() -> None:
    activity = activity_from_graph(load("event_series_master.json"))
    assert activity.subject == "Let's go for lunch"
    assert activity.description == "Does late morning work for you?"  # HTML body read as text
    assert activity.when == Timed(
        datetime(2017, 9, 4, 12, tzinfo=LA), datetime(2017, 9, 4, 14, tzinfo=LA), "America/Los_Angeles"
    )
    assert activity.location == "Harry's Bar"
    assert activity.attendees == (Attendee("adelev@contoso.onmicrosoft.com", "Adele Vance"),)
    assert activity.is_online_meeting
    assert activity.join_url is None  # "onlineMeeting": null
    assert activity.recurrence == Recurrence(
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
        RecurrenceRange(
            RangeType.END_DATE, date(2017, 9, 4), date(2017, 12, 31), None, "America/Los_Angeles"
        ),
    )
    assert activity.is_recurring


def test_online_meeting_fixture_carries_the_join_url() -> None:
    activity = activity_from_graph(load("event_with_online_meeting.json"))
    assert activity.is_online_meeting
    assert activity.join_url is not None
    assert activity.join_url.startswith("https://teams.microsoft.com/l/meetup-join/")
    assert activity.starts_at.astimezone(UTC) == datetime(2017, 4, 15, 18, tzinfo=UTC)  # 11:00 PDT
    assert activity.organizer is None  # isOrganizer: true
    assert activity.modified_at == datetime(2017, 4, 15, 3, 0, 51, 245372, tzinfo=UTC)


def test_prefer_timezone_fixture_keeps_attendee_responses() -> None:
    activity = activity_from_graph(load("event_get_prefer_timezone.json"))
    assert [(a.email, a.response) for a in activity.attendees] == [
        ("samanthab@a830edad905084922e17020313.onmicrosoft.com", AttendeeResponse.NONE),
        ("danas@a830edad905084922e17020313.onmicrosoft.com", AttendeeResponse.TENTATIVELY_ACCEPTED),
    ]
    assert activity.location == "Assembly Hall"
    # A shortened payload: properties it leaves out are not taken for cleared ones.
    assert Field.PRIVACY not in graph_fields_present(load("event_get_prefer_timezone.json"))
    assert Field.ONLINE_MEETING not in graph_fields_present(load("event_get_prefer_timezone.json"))


@pytest.mark.parametrize("name", ["event_delta_page1.json", "event_delta_next_round_with_removed.json"])
def test_delta_items_map_in_utc(name: str) -> None:
    for item in load(name)["value"]:
        if "@removed" in item:
            continue
        activity = activity_from_graph(item)
        assert isinstance(activity.when, Timed)
        assert activity.when.time_zone == "UTC"
        assert activity.description is None  # an empty body


def test_meeting_organised_by_someone_else_names_the_organizer() -> None:
    event = load("event_with_online_meeting.json")
    event["isOrganizer"] = False
    assert activity_from_graph(event).organizer == Organizer("danas@contoso.onmicrosoft.com", "Dana Swope")


@pytest.mark.parametrize(
    ("sensitivity", "private"), [("normal", False), ("private", True), ("confidential", True)]
)
def test_sensitivity_maps_to_privacy(sensitivity: str, private: bool) -> None:
    event = load("event_with_online_meeting.json")
    event["sensitivity"] = sensitivity
    assert activity_from_graph(event).is_private is private


def test_event_without_times_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        activity_from_graph({"id": "x", "subject": "no times"})


# --- Activity → Graph bodies --------------------------------------------------------------------------------


def fixture_like_online_meeting() -> Activity:
    return Activity(
        subject="Let's go for lunch",
        when=Timed(
            datetime(2017, 4, 15, 12, tzinfo=LA), datetime(2017, 4, 15, 14, tzinfo=LA), "America/Los_Angeles"
        ),
        description="Does noon work for you?",
        location="Harry's Bar",
        attendees=(Attendee("samanthab@contoso.onmicrosoft.com", "Samantha Booth", AttendeeKind.USER),),
        is_online_meeting=True,
    )


def test_create_body_has_the_documented_shape() -> None:
    expected = load("event_with_online_meeting_create_request.json")
    body = body_for(fixture_like_online_meeting(), now=datetime(2017, 1, 1, tzinfo=UTC))
    assert set(expected) - {"allowNewTimeProposals"} <= set(body)
    for key in set(expected) & set(body) - {"body"}:
        assert body[key] == expected[key], key
    assert body["body"] == {"contentType": "text", "content": "Does noon work for you?"}  # text, not HTML


def test_recurring_create_body_has_the_documented_shape() -> None:
    expected = load("event_recurring_create_request.json")
    activity = Activity(
        subject="Let's go for lunch",
        when=Timed(
            datetime(2017, 9, 4, 12, tzinfo=LA), datetime(2017, 9, 4, 14, tzinfo=LA), "America/Los_Angeles"
        ),
        description="Does noon time work for you?",
        location="Harry's Bar",
        attendees=(Attendee("adelev@contoso.onmicrosoft.com", "Adele Vance", AttendeeKind.USER),),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
            RecurrenceRange(RangeType.END_DATE, date(2017, 9, 4), date(2017, 12, 31)),
        ),
    )
    body = body_for(activity, now=datetime(2017, 1, 1, tzinfo=UTC))
    assert json.loads(json.dumps(body["recurrence"]).lower()) == json.loads(
        json.dumps(expected["recurrence"]).lower()
    )
    for key in set(expected) & set(body) - {"body", "recurrence", "attendees"}:
        assert body[key] == expected[key], key
    assert json.dumps(body["attendees"]) == json.dumps(expected["attendees"]).replace("AdeleV", "adelev")


def test_graph_round_trip_keeps_every_field() -> None:
    for name in ("event_with_online_meeting.json", "event_get_prefer_timezone.json"):
        original = activity_from_graph(load(name))
        echoed = activity_from_graph(
            as_returned_by_graph(body_for(original, now=datetime(2017, 1, 1, tzinfo=UTC)))
        )
        for field_ in HASHED_FIELDS:
            if field_ is not Field.JOIN_URL:  # Teams makes the join URL; we never write it
                assert field_hash(field_, echoed) == field_hash(field_, original), (name, field_)
        assert [(a.email, a.type) for a in echoed.attendees] == [
            (a.email, a.type) for a in original.attendees
        ]


def test_windows_time_zone_across_a_dst_change() -> None:
    # Berlin leaves winter time on 29 March 2026 at 02:00: same wall clock, one hour less UTC offset after.
    before = timed(datetime(2026, 3, 28, 10, tzinfo=BERLIN), datetime(2026, 3, 28, 11, tzinfo=BERLIN))
    after = timed(datetime(2026, 3, 30, 10, tzinfo=BERLIN), datetime(2026, 3, 30, 11, tzinfo=BERLIN))
    across = timed(datetime(2026, 3, 29, 1, tzinfo=BERLIN), datetime(2026, 3, 29, 4, tzinfo=BERLIN))
    for activity, start_wall, utc_start in (
        (before, "2026-03-28T10:00:00", datetime(2026, 3, 28, 9, tzinfo=UTC)),
        (after, "2026-03-30T10:00:00", datetime(2026, 3, 30, 8, tzinfo=UTC)),
        (across, "2026-03-29T01:00:00", datetime(2026, 3, 29, 0, tzinfo=UTC)),
    ):
        body = body_for(activity)
        assert body["start"] == {"dateTime": start_wall, "timeZone": "W. Europe Standard Time"}
        echoed = activity_from_graph(as_returned_by_graph(body))
        assert echoed.starts_at == utc_start
        assert echoed.when == activity.when
    assert across.ends_at.astimezone(UTC) - across.starts_at.astimezone(UTC) == timedelta(
        hours=2
    )  # CET → CEST


def test_event_zone_comes_from_original_start_time_zone_when_delta_answers_in_utc() -> None:
    event = load("event_with_online_meeting.json")
    event["start"] = {"dateTime": "2017-04-15T18:00:00.0000000", "timeZone": "UTC"}
    event["end"] = {"dateTime": "2017-04-15T19:00:00.0000000", "timeZone": "UTC"}
    activity = activity_from_graph(event)
    assert activity.when == Timed(
        datetime(2017, 4, 15, 11, tzinfo=LA), datetime(2017, 4, 15, 12, tzinfo=LA), "America/Los_Angeles"
    )


def test_multi_day_all_day_event_round_trips() -> None:
    crm = activity_from_crm(
        {**contract_example(), "isAllDay": True, "start": "2026-01-05", "end": "2026-01-08", "timeZone": None}
    )
    assert crm.when == AllDay(date(2026, 1, 5), date(2026, 1, 8))
    body = body_for(crm, default_time_zone="Europe/Berlin")
    assert body["isAllDay"] is True
    assert body["start"] == {"dateTime": "2026-01-05T00:00:00", "timeZone": "W. Europe Standard Time"}
    assert body["end"] == {"dateTime": "2026-01-08T00:00:00", "timeZone": "W. Europe Standard Time"}
    echoed = activity_from_graph(as_returned_by_graph(body))
    assert echoed.when == AllDay(date(2026, 1, 5), date(2026, 1, 8), "Europe/Berlin")
    assert field_hash(Field.START_END, echoed) == field_hash(Field.START_END, crm)
    utc_answer = as_returned_by_graph(body)  # asked for UTC, Graph still answers an all-day event in dates
    utc_answer["start"] = {"dateTime": "2026-01-05T00:00:00.0000000", "timeZone": "UTC"}
    utc_answer["end"] = {"dateTime": "2026-01-08T00:00:00.0000000", "timeZone": "UTC"}
    assert activity_from_graph(utc_answer).when == AllDay(date(2026, 1, 5), date(2026, 1, 8), "UTC")
    crm_body = crm_activity_json(echoed, fields=[Field.START_END])
    assert (crm_body["start"], crm_body["end"], crm_body["isAllDay"]) == ("2026-01-05", "2026-01-08", True)


def test_update_sends_only_the_changed_fields() -> None:
    activity = fixture_like_online_meeting()
    assert set(body_for(activity, for_create=False, fields={Field.SUBJECT, Field.LOCATION})) == {
        "subject",
        "location",
    }
    assert set(body_for(activity, for_create=False, fields={Field.START_END})) == {"start", "end", "isAllDay"}
    assert body_for(activity, for_create=False, fields={Field.JOIN_URL, Field.ORGANIZER}) == {}
    cleared = body_for(Activity("x", activity.when), for_create=False, fields={Field.LOCATION, Field.PRIVACY})
    assert cleared == {"location": {"displayName": ""}, "sensitivity": "normal"}


def test_description_on_create_policy_never_updates_the_body() -> None:
    activity = fixture_like_online_meeting()
    on_create = DescriptionPolicy.ON_CREATE
    assert "body" in body_for(activity, description_policy=on_create)
    assert (
        body_for(activity, for_create=False, fields={Field.DESCRIPTION}, description_policy=on_create) == {}
    )


def test_no_attendees_are_added_to_an_event_that_has_ended() -> None:
    activity = fixture_like_online_meeting()  # April 2017
    assert "attendees" not in body_for(activity, now=NOW)
    assert "attendees" not in body_for(activity, now=NOW, for_create=False, fields={Field.ATTENDEES})
    assert "attendees" in body_for(activity, now=datetime(2017, 4, 1, tzinfo=UTC))


def test_contacts_are_invited_only_when_enabled() -> None:
    user = Attendee("jo@vendor.example", "Jo", AttendeeKind.USER, crm_id="usr-2")
    contact = Attendee("ada@contoso.com", "Ada", AttendeeKind.CONTACT, crm_id="con-1")
    lead = Attendee("bob@fabrikam.com", None, AttendeeKind.LEAD, crm_id="lead-1")
    activity = timed(datetime(2026, 2, 1, 10, tzinfo=BERLIN), datetime(2026, 2, 1, 11, tzinfo=BERLIN))
    activity = Activity(activity.subject, activity.when, attendees=(user, contact, lead))

    def invited(body: dict[str, Any]) -> list[str]:
        return [a["emailAddress"]["address"] for a in body.get("attendees", [])]

    assert invited(body_for(activity, invite_crm_contacts=False)) == ["jo@vendor.example"]
    assert invited(body_for(activity, invite_crm_contacts=True)) == [a.email for a in activity.attendees]
    # An update never drops someone Outlook already has, even when they would not be invited today.
    update = body_for(
        activity,
        for_create=False,
        fields={Field.ATTENDEES},
        invite_crm_contacts=False,
        already_invited={"ada@contoso.com"},
    )
    assert invited(update) == ["jo@vendor.example", "ada@contoso.com"]


def test_private_and_online_meeting_on_the_wire() -> None:
    activity = Activity("x", fixture_like_online_meeting().when, is_private=True, is_online_meeting=True)
    body = body_for(activity, now=datetime(2017, 1, 1, tzinfo=UTC), transaction_id="crmsync.1.act-1")
    assert body["sensitivity"] == "private"
    assert (body["isOnlineMeeting"], body["onlineMeetingProvider"]) == (True, "teamsForBusiness")
    assert body["transactionId"] == "crmsync.1.act-1"
    assert "transactionId" not in body_for(activity, for_create=False, transaction_id="t")


# --- descriptions -------------------------------------------------------------------------------------------


def test_html_and_text_bodies_normalize_to_the_same_description() -> None:
    html_body = (
        "<html><head><style>p {}</style></head>"
        "<body><p>Agenda:&nbsp;scope</p><p>Plan  <b>now</b></p></body></html>"
    )
    assert html_to_text(html_body).strip() == "Agenda: scope\n\nPlan now"
    assert normalize_description(html_to_text(html_body)) == normalize_description(
        "Agenda: scope\r\n\r\nPlan now  \r\n"
    )


def test_teams_invitation_block_is_not_description() -> None:
    teams = (
        "Agenda\r\n\r\n" + "_" * 80 + "\r\nMicrosoft Teams meeting\r\nJoin on your computer\r\n"
        "Click here to join the meeting<https://teams.microsoft.com/l/meetup-join/x>\r\n" + "_" * 80 + "\r\n"
    )
    assert normalize_description(teams) == "Agenda"
    assert normalize_description("a\n" + "_" * 30 + "\nsignature") == "a\n" + "_" * 30 + "\nsignature"


# --- CRM JSON -----------------------------------------------------------------------------------------------


def test_contract_example_reads_as_an_activity() -> None:
    record = crm_record_from_json(contract_example())
    assert (record.crm_id, record.version) == ("act-7f3a9c2e41d0", "12")
    activity = record.activity
    assert activity.activity_type is ActivityType.MEETING
    assert activity.when == Timed(
        datetime(2026, 1, 5, 10, tzinfo=BERLIN), datetime(2026, 1, 5, 11, tzinfo=BERLIN), "Europe/Berlin"
    )
    assert activity.attendees[0] == Attendee(
        "ada@contoso.com",
        "Ada Lovelace",
        AttendeeKind.CONTACT,
        AttendeeType.REQUIRED,
        AttendeeResponse.ACCEPTED,
        "con-1",
    )
    assert activity.modified_at == datetime(2026, 1, 2, 9, 0, 12, 345000, tzinfo=UTC)


def test_crm_round_trip_keeps_the_activity() -> None:
    example = contract_example()
    body = crm_activity_json(activity_from_crm(example))
    read_only = {
        "crmId",
        "version",
        "createdAt",
        "modifiedAt",
        "recurrence",
        "occurrenceOverrides",
        "cancelledOccurrences",
    }
    assert body == {key: value for key, value in example.items() if key not in read_only}


def test_crm_round_trip_keeps_the_reserved_recurrence_shape() -> None:
    example = contract_example() | {
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
        "cancelledOccurrences": ["2026-01-12T10:00:00+01:00"],
    }
    activity = activity_from_crm(example)
    assert activity.is_recurring
    body = crm_activity_json(activity)
    assert body["recurrence"] == example["recurrence"]
    assert body["cancelledOccurrences"] == example["cancelledOccurrences"]
    assert activity_from_crm(example | body) == activity


def test_crm_patch_sends_whole_top_level_fields() -> None:
    activity = activity_from_crm(contract_example())
    assert set(crm_activity_json(activity, fields=[Field.START_END])) == {
        "start",
        "end",
        "timeZone",
        "isAllDay",
    }
    assert crm_activity_json(activity, fields=[Field.JOIN_URL]) == {
        "onlineMeeting": {"joinUrl": "https://teams.microsoft.com/l/meetup-join/abc"}
    }
    assert set(crm_activity_json(activity, fields=[Field.ATTENDEES, Field.ONLINE_MEETING])) == {
        "attendees",
        "requestOnlineMeeting",
    }


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"subject": None}, {"subject": "must be a string"}),
        ({"colour": "red"}, {"colour": "unknown field"}),
        ({"end": "2026-01-05T09:00:00+01:00"}, {"end": "must not be before start"}),
        ({"timeZone": "W. Europe Standard Time"}, {"timeZone": "must be an IANA time zone name"}),
        ({"timeZone": None}, {"timeZone": "is required for a timed activity"}),
        ({"start": "2026-01-05 10:00"}, {"start": "must be an RFC 3339 date-time with offset"}),
        (
            {"isAllDay": True},
            {
                "start": "must be a date (YYYY-MM-DD) for an all-day activity",
                "end": "must be a date (YYYY-MM-DD) for an all-day activity",
            },
        ),
        (
            {"isAllDay": True, "start": "2026-01-05", "end": "2026-01-05"},
            {"end": "must be after start (the end date is exclusive)"},
        ),
        ({"type": "lunch"}, {"type": "is not one of the allowed values"}),
        ({"version": 12}, {"version": "must be a string"}),
        ({"onlineMeeting": {"joinUrl": "http://x"}}, {"onlineMeeting.joinUrl": "must be an https URL"}),
        (
            {"cancelledOccurrences": ["2026-01-12"]},
            {"cancelledOccurrences": "must be empty when recurrence is null"},
        ),
    ],
)
def test_bad_crm_json_gives_field_errors(change: dict[str, Any], errors: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(contract_example() | change)
    assert raised.value.field_errors == errors


def test_attendee_errors_name_their_index() -> None:
    example = contract_example()
    example["attendees"] = [
        example["attendees"][0],
        {"email": "ADA@contoso.com", "kind": "contact"},
        {"email": "no-at-sign", "kind": "external", "crmId": "con-9"},
        {"email": "x@y.z", "kind": "robot"},
    ]
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(example)
    assert raised.value.field_errors == {"attendees.3.kind": "is not one of the allowed values"}
    del example["attendees"][3]
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(example)
    assert raised.value.field_errors == {
        "attendees.1.email": "appears twice in the attendees",
        "attendees.2.email": "is not an email address",
        "attendees.2.crmId": "must be null for an external attendee",
    }


def test_recurrence_rules_give_field_errors() -> None:
    recurrence = {
        "pattern": {"type": "weekly", "interval": 1},
        "range": {"type": "numbered", "startDate": "2026-01-05"},
    }
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(contract_example() | {"recurrence": recurrence})
    assert raised.value.field_errors == {
        "recurrence.pattern.daysOfWeek": "is required for weekly recurrence",
        "recurrence.range.numberOfOccurrences": "is required for a numbered range",
    }


@pytest.mark.parametrize("body", [[], "text", None])
def test_a_body_that_is_not_an_object_is_refused(body: object) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json(body)
    assert raised.value.field_errors == {"(body)": "must be a JSON object"}


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        crm_record_from_json({"crmId": "a"})
    assert {"version", "modifiedAt", "ownerCrmUserId", "type", "subject", "start", "end"} <= set(
        raised.value.field_errors
    )


# --- people and classification ------------------------------------------------------------------------------

PEOPLE = people_from_crm_json(
    {
        "contacts": [
            {
                "crmId": "con-1",
                "email": "Ada@Contoso.com",
                "name": "Ada Lovelace",
                "account": {"crmId": "acc-1", "name": "Contoso"},
            },
            {"crmId": "con-2", "email": "loner@example.org", "name": "Lone", "account": None},
        ],
        "leads": [{"crmId": "lead-1", "email": "bob@fabrikam.com", "name": "Bob", "company": "Fabrikam"}],
        "users": [{"crmUserId": "usr-1", "email": "jo@vendor.example", "name": "Jo"}],
    }
)


def outlook_event_with(*emails: str) -> Activity:
    when = Timed(datetime(2026, 2, 1, 10, tzinfo=UTC), datetime(2026, 2, 1, 11, tzinfo=UTC), "UTC")
    return Activity("Call", when, attendees=tuple(Attendee(email) for email in emails))


@pytest.mark.parametrize(
    ("emails", "expected"),
    [
        (("ada@contoso.com",), ActivityType.MEETING),
        (("jo@vendor.example", "ADA@CONTOSO.COM"), ActivityType.MEETING),
        (("loner@example.org",), ActivityType.PERSONAL_APPOINTMENT),  # a contact without an account
        (("bob@fabrikam.com",), ActivityType.PERSONAL_APPOINTMENT),  # a lead
        (("jo@vendor.example",), ActivityType.PERSONAL_APPOINTMENT),
        ((), ActivityType.PERSONAL_APPOINTMENT),
    ],
)
def test_classification_of_outlook_events(emails: tuple[str, ...], expected: ActivityType) -> None:
    assert classify(outlook_event_with(*emails), PEOPLE) is expected


def test_outlook_event_made_ready_for_the_crm() -> None:
    activity = activity_for_crm(
        outlook_event_with("ada@contoso.com", "bob@fabrikam.com", "jo@vendor.example", "x@example.com"),
        people=PEOPLE,
        owner_crm_user_id="usr-1",
    )
    assert activity.owner_crm_user_id == "usr-1"
    assert [(a.kind, a.crm_id) for a in activity.attendees] == [
        (AttendeeKind.CONTACT, "con-1"),
        (AttendeeKind.LEAD, "lead-1"),
        (AttendeeKind.USER, "usr-1"),
        (AttendeeKind.EXTERNAL, None),
    ]
    body = crm_activity_json(activity)
    assert body["type"] == "meeting"
    assert body["links"] == {"accountId": "acc-1", "contactIds": ["con-1"], "leadIds": ["lead-1"]}
    assert crm_record_from_json(body | {"crmId": "a-1", "version": "1", "modifiedAt": "2026-01-01T00:00:00Z"})
