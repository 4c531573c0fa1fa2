"""The *base* of the three-way merge: what each side held after the last sync, per field.

A side has changed a field when the hash of its normalized value differs from that side's base hash. The
base is kept per side (vdirsyncer keeps a hash per side too) because the sides may legitimately hold
different values for one field: Outlook does not get the attendees the CRM withholds, and only Outlook has
a Teams join URL. After a sync both sides' hashes are of what each side holds, so our own writes never
echo back as changes.

Hashes are stable across processes and versions of Python: the first 128 bits of SHA-256 over canonical
JSON (sorted keys, no spaces, UTF-8) of the normalized value. Times are UTC instants to the second plus the
UTC offsets the event's zone has at its start and end: the zone matters only through its offsets, so
``Europe/Vienna`` written to Outlook and read back as ``W. Europe Standard Time`` is not a change.
Descriptions count by content, not layout: blank lines and runs of blanks do not count (Outlook renders the
HTML it stores back to text with its own paragraph spacing). The base of an M365-owned field (the join URL,
the organizer) is the value the CRM was last given, so whatever Outlook holds that differs reaches the CRM.

Series (``model.SERIES_FIELDS``) hash as three fields: the recurrence (pattern and range as they decide the
occurrences, and the series' zone by its offsets, as above), the overrides (each only by what it changes
against the series: an override that repeats the series' subject or times changes nothing) and the
cancellations. They are not in ``HASHED_FIELDS``: a single item's base never holds them, and the merge adds
them for a series only (``merge_item(series=True)``, ``Base.of_synced`` of a series), over ``series.within``
the window both sides were read in, since Outlook lists a series' instances only within a window.

Attendees are not hashed but kept as lists (``AttendeeBase``): the merge works attendee by attendee, which
needs the lists themselves (who did the CRM withhold, who did Outlook add).

The overrides and cancellations are also kept occurrence by occurrence (``OccurrenceBase``: per side, a
hash of each touched occurrence's state, ``series_values.occurrence_values``), so the merge can take one
side's change to one occurrence and the other side's to another; a link written before has none (None),
and its series merges the two fields whole.

Stored form (``Link.base_hashes``, ``Link.base_attendees``, ``Link.base_occurrences``): ``{"crm.subject":
hash, "m365.subject": hash, …}``, canonical JSON ``{"crm": [[email, name, kind, type, response, crmId], …],
"m365": [[email, name, type, response], …]}`` and ``{"crm": {key: hash, …}, "m365": {key: hash, …}}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from sync_core.domain.model import (
    SERIES_FIELDS,
    Activity,
    AllDay,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    AttendeeType,
    Field,
    Side,
    Timed,
    canonical_description,
)
from sync_core.domain.series_values import (
    canonical_cancellations,
    canonical_overrides,
    canonical_recurrence,
    occurrence_values,
)
from sync_core.domain.state import Link
from sync_core.domain.timezones import zone

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]

# The fields the merge of every item hashes: all but the attendees (merged as lists) and the series fields.
HASHED_FIELDS: tuple[Field, ...] = tuple(
    f for f in Field if f is not Field.ATTENDEES and f not in SERIES_FIELDS
)


def canonical_value(field_: Field, activity: Activity) -> JsonValue:
    """The normalized value of one field, as JSON-able data; equal content gives an equal value."""
    if field_ is Field.SUBJECT:
        return activity.subject.strip()
    if field_ is Field.DESCRIPTION:
        return canonical_description(activity.description)
    if field_ is Field.START_END:
        return _canonical_when(activity)
    if field_ is Field.LOCATION:
        return (activity.location or "").strip()
    if field_ is Field.PRIVACY:
        return activity.is_private
    if field_ is Field.ONLINE_MEETING:
        return activity.is_online_meeting
    if field_ is Field.JOIN_URL:
        return activity.join_url or ""
    if field_ is Field.ORGANIZER:
        return activity.organizer.email if activity.organizer is not None else ""
    if field_ is Field.RECURRENCE:
        return canonical_recurrence(activity)
    if field_ is Field.OCCURRENCE_OVERRIDES:
        return canonical_overrides(activity)
    if field_ is Field.CANCELLED_OCCURRENCES:
        return canonical_cancellations(activity)
    return [[attendee.email, attendee.type.value] for attendee in sorted_attendees(activity.attendees)]


def _canonical_when(activity: Activity) -> JsonValue:
    when = activity.when
    if isinstance(when, AllDay):
        return {"allDay": [when.start.isoformat(), when.end.isoformat()]}
    assert isinstance(when, Timed)
    event_zone = zone(when.time_zone)
    return {
        "start": _utc_second(when.start),
        "end": _utc_second(when.end),
        "offsets": [
            _offset_minutes(when.start.astimezone(event_zone)),
            _offset_minutes(when.end.astimezone(event_zone)),
        ],
    }


def _utc_second(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offset_minutes(moment: datetime) -> int:
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() // 60)


def value_hash(value: JsonValue) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def field_hash(field_: Field, activity: Activity) -> str:
    return value_hash(canonical_value(field_, activity))


def sorted_attendees(attendees: Iterable[Attendee]) -> tuple[Attendee, ...]:
    return tuple(sorted(attendees, key=lambda attendee: attendee.email))


# --- the stored base ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttendeeBase:
    """The attendee lists each side held after the last sync (sorted by email)."""

    crm: tuple[Attendee, ...]
    m365: tuple[Attendee, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "crm", sorted_attendees(self.crm))
        object.__setattr__(self, "m365", sorted_attendees(self.m365))


@dataclass(frozen=True)
class OccurrenceBase:
    """The touched occurrences of a series each side held after the last sync: key → hash of its state
    (``occurrence_hashes``); an occurrence absent is as the pattern puts it."""

    crm: Mapping[str, str]
    m365: Mapping[str, str]

    @classmethod
    def of_synced(cls, crm: Activity, m365: Activity) -> OccurrenceBase:
        return cls(occurrence_hashes(crm), occurrence_hashes(m365))


def occurrence_hashes(activity: Activity) -> dict[str, str]:
    """The hash of each touched occurrence's state, by its key (none for a single item)."""
    return {key: value_hash(state) for key, state in occurrence_values(activity).items()}


@dataclass(frozen=True)
class Base:
    """What both sides held after the last sync: a hash per side and field, and the attendee lists.

    A missing hash means *unknown* (a link written before the field existed): the merge then takes the
    side's current value as the base instead of calling it a change.
    """

    hashes: Mapping[tuple[Side, Field], str] = field(default_factory=dict)
    attendees: AttendeeBase | None = None
    occurrences: OccurrenceBase | None = None  # None: a single item, or a series linked before it was kept

    def hash_of(self, side: Side, field_: Field) -> str | None:
        return self.hashes.get((side, field_))

    @staticmethod
    def side_hashes(side: Side, activity: Activity) -> dict[tuple[Side, Field], str]:
        """The hashes of every hashed field ``side`` keeps (the CRM keeps none of the M365-owned ones)."""
        return {
            (side, field_): field_hash(field_, activity)
            for field_ in HASHED_FIELDS
            if side is Side.M365 or not field_.m365_owned
        }

    @staticmethod
    def series_hashes(side: Side, activity: Activity) -> dict[tuple[Side, Field], str]:
        """The hashes of the series fields (``model.SERIES_FIELDS``) ``side`` holds: for series sync."""
        return {(side, field_): field_hash(field_, activity) for field_ in SERIES_FIELDS}

    @classmethod
    def of_synced(cls, crm: Activity, m365: Activity) -> Base:
        """The base after a sync that left the CRM holding ``crm`` and Outlook holding ``m365``."""
        hashes = {**cls.side_hashes(Side.CRM, crm), **cls.side_hashes(Side.M365, m365)}
        occurrences = None
        if crm.is_recurring or m365.is_recurring:
            hashes.update({**cls.series_hashes(Side.CRM, crm), **cls.series_hashes(Side.M365, m365)})
            occurrences = OccurrenceBase.of_synced(crm, m365)
        return cls(
            hashes=MappingProxyType(hashes),
            attendees=AttendeeBase(crm.attendees, m365.attendees),
            occurrences=occurrences,
        )

    def stored_hashes(self) -> dict[str, str]:
        return {f"{side.value}.{field_.value}": digest for (side, field_), digest in self.hashes.items()}

    def stored_attendees(self) -> str | None:
        if self.attendees is None:
            return None
        document = {
            "crm": [
                [a.email, a.name, a.kind.value, a.type.value, a.response.value, a.crm_id]
                for a in self.attendees.crm
            ],
            "m365": [[a.email, a.name, a.type.value, a.response.value] for a in self.attendees.m365],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def stored_occurrences(self) -> str | None:
        if self.occurrences is None:
            return None
        document = {"crm": dict(self.occurrences.crm), "m365": dict(self.occurrences.m365)}
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_link(cls, link: Link) -> Base:
        """The base stored in a link; entries that do not parse are dropped (read as unknown)."""
        hashes: dict[tuple[Side, Field], str] = {}
        for key, digest in link.base_hashes.items():
            side_name, _, field_name = key.partition(".")
            try:
                hashes[(Side(side_name), Field(field_name))] = digest
            except ValueError:
                continue
        return cls(
            hashes=MappingProxyType(hashes),
            attendees=_parse_attendee_base(link.base_attendees),
            occurrences=_parse_occurrence_base(link.base_occurrences),
        )


def _parse_attendee_base(text: str | None) -> AttendeeBase | None:
    if not text:
        return None
    try:
        document = json.loads(text)
        crm = tuple(
            Attendee(
                email=row[0],
                name=row[1],
                kind=AttendeeKind(row[2]),
                type=AttendeeType(row[3]),
                response=AttendeeResponse(row[4]),
                crm_id=row[5],
            )
            for row in document["crm"]
        )
        m365 = tuple(
            Attendee(email=row[0], name=row[1], type=AttendeeType(row[2]), response=AttendeeResponse(row[3]))
            for row in document["m365"]
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # unreadable reads as unknown: the merge re-baselines attendees from what it sees
    return AttendeeBase(crm, m365)


def _parse_occurrence_base(text: str | None) -> OccurrenceBase | None:
    if not text:
        return None
    try:
        document = json.loads(text)
        crm, m365 = document["crm"], document["m365"]
        if not isinstance(crm, dict) or not isinstance(m365, dict):
            return None
        return OccurrenceBase(
            {str(key): str(digest) for key, digest in crm.items()},
            {str(key): str(digest) for key, digest in m365.items()},
        )
    except (ValueError, KeyError, TypeError):
        return None  # unreadable reads as unknown: the series merges its two occurrence fields whole
