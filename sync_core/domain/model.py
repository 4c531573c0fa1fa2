"""The side-neutral calendar item both sides are mapped to, and the vocabulary of the merge.

Terminology
-----------
Activity
    One calendar item as the sync understands it, whichever side it came from: an Outlook event
    (``mapping.activity_from_graph``) or a CRM activity (``mapping.activity_from_crm``). Values are normalized
    when an Activity is built (emails lower-cased, descriptions as plain text without the Teams block), so two
    Activities that hold the same content compare equal field by field.
Side
    ``CRM`` or ``M365`` (Microsoft 365 / Outlook, reached through Graph). The values are the contract's
    (``winner: crm | m365`` in a conflict event).
Field
    The unit of the three-way merge: a field changed on one side is copied to the other as a whole; a field
    changed on both sides to different values is a conflict. ``START_END`` is one field because start, end,
    time zone and all-day only make sense together.
M365-owned field
    A field only Outlook can write (the Teams join URL, the organizer of a meeting someone else organises):
    it travels to the CRM, never back.
Withheld attendee
    A CRM attendee the service deliberately did not invite in Outlook (a contact while ``INVITE_CRM_CONTACTS``
    is off, or anyone added after the event ended). The CRM keeps it; Outlook never sees it.
Series
    An Activity with a ``recurrence``: its ``when`` is the master's (the first occurrence's times), its other
    fields every occurrence's unless an ``OccurrenceOverride`` says otherwise for one occurrence (an
    *exception*, in Graph's words). Overrides and ``cancelled_occurrences`` are keyed by the occurrence's
    *original start* (``recurrence.occurrence_key``): a UTC instant for a timed series, a date for an all-day
    one. ``recurrence.py`` expands a series, ``series.py`` reads one occurrence of it.

Everything here is a frozen value: change one with ``dataclasses.replace``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from types import MappingProxyType

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.timezones import zone

# The CRM's activity version. The contract (docs/crm-contract.md §2) calls it an opaque string compared for
# equality only; ``state.Link`` and ``state.OutboxEntry`` store it as an int today. The domain never orders
# versions, so switching to ``str`` is this line plus the two state fields and their table columns.
CrmVersion = str  # opaque (the contract): compared for equality, never ordered


class Side(enum.Enum):
    CRM = "crm"
    M365 = "m365"

    @property
    def other(self) -> Side:
        return Side.M365 if self is Side.CRM else Side.CRM


class ActivityType(enum.Enum):
    MEETING = "meeting"
    PERSONAL_APPOINTMENT = "personal_appointment"
    CALL = "call"  # stored by the CRM, not synced yet
    TASK = "task"  # stored by the CRM, not synced yet

    @property
    def is_synced(self) -> bool:
        return self in (ActivityType.MEETING, ActivityType.PERSONAL_APPOINTMENT)


class AttendeeKind(enum.Enum):
    USER = "user"  # a CRM user (a colleague): always invited
    CONTACT = "contact"
    LEAD = "lead"
    EXTERNAL = "external"  # anyone the CRM does not know


class AttendeeType(enum.Enum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"


class AttendeeResponse(enum.Enum):
    NONE = "none"
    ORGANIZER = "organizer"
    ACCEPTED = "accepted"
    TENTATIVELY_ACCEPTED = "tentativelyAccepted"
    DECLINED = "declined"
    NOT_RESPONDED = "notResponded"


class Field(enum.Enum):
    """The unit of the per-field merge, with the JSON keys it covers on each side."""

    SUBJECT = "subject"
    DESCRIPTION = "description"
    START_END = "start_end"  # start, end, time zone and all-day travel together
    LOCATION = "location"
    PRIVACY = "privacy"
    ATTENDEES = "attendees"  # merged attendee by attendee; responses travel from Outlook to the CRM
    ONLINE_MEETING = "online_meeting"  # CRM requestOnlineMeeting ⇄ Outlook isOnlineMeeting
    JOIN_URL = "join_url"  # M365-owned: the Teams join URL, back to the CRM
    ORGANIZER = "organizer"  # M365-owned: who organises a meeting the user was invited to
    # Series only: merged for a series alone (``merge_item(series=True)``; not in ``hashing.HASHED_FIELDS``).
    RECURRENCE = "recurrence"  # pattern, range and the series' zone
    OCCURRENCE_OVERRIDES = "occurrence_overrides"  # the changed occurrences (written to Outlook per instance)
    CANCELLED_OCCURRENCES = "cancelled_occurrences"  # the cancelled ones (deleted in Outlook per instance)

    @property
    def m365_owned(self) -> bool:
        return self in (Field.JOIN_URL, Field.ORGANIZER)

    @property
    def series_only(self) -> bool:
        """A field only a series has (a single item's value is always empty)."""
        return self in SERIES_FIELDS

    @property
    def crm_keys(self) -> tuple[str, ...]:
        return _CRM_KEYS[self]

    @property
    def graph_keys(self) -> tuple[str, ...]:
        """The Graph event properties that carry the field (empty for fields Graph does not let us write)."""
        return _GRAPH_KEYS[self]


_CRM_KEYS: Mapping[Field, tuple[str, ...]] = MappingProxyType(
    {
        Field.SUBJECT: ("subject",),
        Field.DESCRIPTION: ("description",),
        Field.START_END: ("start", "end", "timeZone", "isAllDay"),
        Field.LOCATION: ("location",),
        Field.PRIVACY: ("isPrivate",),
        Field.ATTENDEES: ("attendees",),
        Field.ONLINE_MEETING: ("requestOnlineMeeting",),
        Field.JOIN_URL: ("onlineMeeting",),
        Field.ORGANIZER: ("organizer",),
        Field.RECURRENCE: ("recurrence",),
        Field.OCCURRENCE_OVERRIDES: ("occurrenceOverrides",),
        Field.CANCELLED_OCCURRENCES: ("cancelledOccurrences",),
    }
)
_GRAPH_KEYS: Mapping[Field, tuple[str, ...]] = MappingProxyType(
    {
        Field.SUBJECT: ("subject",),
        Field.DESCRIPTION: ("body",),
        Field.START_END: ("start", "end", "isAllDay"),
        Field.LOCATION: ("location",),
        Field.PRIVACY: ("sensitivity",),
        Field.ATTENDEES: ("attendees",),
        Field.ONLINE_MEETING: ("isOnlineMeeting", "onlineMeetingProvider"),
        Field.JOIN_URL: (),
        Field.ORGANIZER: (),
        Field.RECURRENCE: ("recurrence",),
        # Not master properties: ``series_to_graph`` writes them as PATCH / DELETE of single instances.
        Field.OCCURRENCE_OVERRIDES: (),
        Field.CANCELLED_OCCURRENCES: (),
    }
)
ALL_FIELDS: tuple[Field, ...] = tuple(Field)
SERIES_FIELDS: tuple[Field, ...] = (Field.RECURRENCE, Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES)


@dataclass(frozen=True)
class Attendee:
    email: str  # lower-cased; unique within an activity
    name: str | None = None
    kind: AttendeeKind = AttendeeKind.EXTERNAL
    type: AttendeeType = AttendeeType.REQUIRED
    response: AttendeeResponse = AttendeeResponse.NONE
    crm_id: str | None = None  # the crmUserId for a user, the contact or lead id; None for external

    def __post_init__(self) -> None:
        if self.email != self.email.strip().lower():
            object.__setattr__(self, "email", self.email.strip().lower())


@dataclass(frozen=True)
class Organizer:
    email: str
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "email", self.email.strip().lower())


@dataclass(frozen=True)
class Timed:
    """A timed event: two instants, and the IANA zone the event belongs to (display, recurrence)."""

    start: datetime
    end: datetime
    time_zone: str

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a timed event needs aware datetimes")
        if self.end.astimezone(UTC) < self.start.astimezone(UTC):  # instants: one zone compares wall clocks
            raise ValueError("end must not be before start")
        zone(self.time_zone)  # raises UnknownTimeZoneError (a ValueError) for an unknown zone


@dataclass(frozen=True)
class AllDay:
    """An all-day event: whole days, ``end`` exclusive (5 January alone is 5 → 6 January)."""

    start: date
    end: date
    time_zone: str | None = None  # where its midnights are; None: the user's zone (UTC when unknown)

    def __post_init__(self) -> None:
        if isinstance(self.start, datetime) or isinstance(self.end, datetime):
            raise ValueError("an all-day event has dates, not datetimes")
        if self.end <= self.start:
            raise ValueError("the end date is exclusive and must be after the start date")
        if self.time_zone is not None:
            zone(self.time_zone)


When = Timed | AllDay


@dataclass(frozen=True)
class RecurrencePattern:
    """The contract's pattern: Graph's ``recurrencePattern`` with ``None`` where Graph writes 0.

    Day names are Graph's, lower-case (``recurrence.DAYS_OF_WEEK``); ``index`` is one of
    ``recurrence.WEEK_INDEXES``. Properties the type does not use are kept as given and ignored by the
    expansion and the hash (Graph, too, returns every property whatever the type)."""

    type: PatternType
    interval: int
    days_of_week: tuple[str, ...] = ()
    first_day_of_week: str = "sunday"
    index: str = "first"
    day_of_month: int | None = None
    month: int | None = None


@dataclass(frozen=True)
class RecurrenceRange:
    """Graph's ``recurrenceRange``: ``start_date`` is the master's start date in the series' zone (Graph
    requires it); ``end_date`` (inclusive) only for ``END_DATE``, ``number_of_occurrences`` only for
    ``NUMBERED``."""

    type: RangeType
    start_date: date
    end_date: date | None = None
    number_of_occurrences: int | None = None
    recurrence_time_zone: str | None = None  # IANA; None: the activity's zone


@dataclass(frozen=True)
class Recurrence:
    pattern: RecurrencePattern
    range: RecurrenceRange


@dataclass(frozen=True)
class OccurrenceOverride:
    """One changed occurrence of a series (an *exception*): the fields that are not None replace the
    series' value for that occurrence. An empty string clears a text field for the occurrence (a location
    removed from one occurrence is ``location=""``); ``attendees=()`` means nobody. ``start`` and ``end``
    come together: the occurrence was moved. Keyed by ``original_start`` (see *Series* above)."""

    original_start: datetime | date
    subject: str | None = None
    description: str | None = None
    location: str | None = None
    start: datetime | date | None = None
    end: datetime | date | None = None
    attendees: tuple[Attendee, ...] | None = None


@dataclass(frozen=True)
class CrmLinks:
    """The CRM records an activity is about (CRM-only data; never compared)."""

    account_id: str | None = None
    contact_ids: tuple[str, ...] = ()
    lead_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Activity:
    """A calendar item, side-neutral and normalized. The fields in ``Field`` are synced (the series fields
    for a series); the rest is bookkeeping one side holds (type, owner, timestamps, links).

    A series' overrides are kept in original-start order, one per original start (the last given wins);
    its cancellations sorted and unique."""

    subject: str
    when: When
    description: str | None = None  # plain text, normalized by ``normalize_description``
    location: str | None = None
    is_private: bool = False
    attendees: tuple[Attendee, ...] = ()
    organizer: Organizer | None = None  # None: the calendar's owner organises it
    is_online_meeting: bool = False
    join_url: str | None = None
    activity_type: ActivityType | None = (
        None  # None: not decided yet (an Outlook event before classification)
    )
    owner_crm_user_id: str | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None  # the side's last modification: ``latest_wins`` compares these
    crm_links: CrmLinks = field(default_factory=CrmLinks)
    recurrence: Recurrence | None = None
    occurrence_overrides: tuple[OccurrenceOverride, ...] = ()
    cancelled_occurrences: tuple[datetime | date, ...] = ()

    def __post_init__(self) -> None:
        if self.occurrence_overrides:
            by_start = {_moment_order(o.original_start): o for o in self.occurrence_overrides}
            object.__setattr__(self, "occurrence_overrides", tuple(by_start[k] for k in sorted(by_start)))
        if self.cancelled_occurrences:
            unique = {_moment_order(moment): moment for moment in self.cancelled_occurrences}
            object.__setattr__(self, "cancelled_occurrences", tuple(unique[k] for k in sorted(unique)))

    @property
    def is_all_day(self) -> bool:
        return isinstance(self.when, AllDay)

    @property
    def is_recurring(self) -> bool:
        return self.recurrence is not None

    @property
    def starts_at(self) -> datetime:
        """The first instant of the item (an all-day item starts at midnight in its zone, UTC if none)."""
        if isinstance(self.when, Timed):
            return self.when.start
        return datetime.combine(self.when.start, time(), tzinfo=_all_day_zone(self.when))

    @property
    def ends_at(self) -> datetime:
        if isinstance(self.when, Timed):
            return self.when.end
        return datetime.combine(self.when.end, time(), tzinfo=_all_day_zone(self.when))

    def has_ended(self, now: datetime) -> bool:
        return self.ends_at <= now

    def attendee(self, email: str) -> Attendee | None:
        wanted = email.strip().lower()
        return next((attendee for attendee in self.attendees if attendee.email == wanted), None)


def _all_day_zone(when: AllDay) -> tzinfo:
    return zone(when.time_zone) if when.time_zone else UTC


def _moment_order(moment: datetime | date) -> tuple[int, str]:
    """A sort key for original starts: instants by their UTC value, dates by themselves (never mixed in a
    valid series, but a mixed tuple must not make building an Activity raise)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            return (1, moment.isoformat())
        return (1, moment.astimezone(UTC).isoformat())
    return (0, moment.isoformat())


# --- people (the CRM's ``GET /people`` answer, as data for classification) ----------------------------------


@dataclass(frozen=True)
class Person:
    """A CRM record matching an email: a user, a contact (with its account, if any) or a lead."""

    email: str
    kind: AttendeeKind
    crm_id: str
    name: str | None = None
    account_id: str | None = None  # contacts only

    def __post_init__(self) -> None:
        object.__setattr__(self, "email", self.email.strip().lower())


@dataclass(frozen=True)
class PeopleDirectory:
    """Who the CRM knows, by email. When one email matches several records, a user beats a contact beats a
    lead (a colleague is never invited as a customer), and the first record of a kind wins."""

    people: tuple[Person, ...] = ()
    _by_email: Mapping[str, Person] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranked: dict[str, Person] = {}
        for person in sorted(self.people, key=lambda person: _KIND_RANK[person.kind]):
            ranked.setdefault(person.email, person)
        object.__setattr__(self, "_by_email", MappingProxyType(ranked))

    def find(self, email: str) -> Person | None:
        return self._by_email.get(email.strip().lower())

    def merged(self, others: Iterable[Person]) -> PeopleDirectory:
        return PeopleDirectory((*self.people, *others))


_KIND_RANK = {AttendeeKind.USER: 0, AttendeeKind.CONTACT: 1, AttendeeKind.LEAD: 2, AttendeeKind.EXTERNAL: 3}


# --- description normalization ------------------------------------------------------------------------------

# Outlook appends a Teams invitation to the body of an online meeting, between two lines of underscores. The
# join URL travels on its own (Field.JOIN_URL), so the block is not description content: without this, every
# Teams meeting created from the CRM would come back as a description edit.
_RULE = re.compile(r"^_{20,}$")
_TEAMS_MARK = "Microsoft Teams"
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize_description(text: str | None) -> str | None:
    """Plain text as the sync compares it: LF line ends, no trailing spaces, no leading or trailing blank
    lines, at most one blank line in a row, non-breaking spaces as spaces, no Teams invitation block; an
    empty result is ``None``. Idempotent, so a description that only went through Outlook's text rendering
    (CRLF, trailing spaces) compares equal to what we wrote."""
    if text is None:
        return None
    unified = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    lines = _without_teams_block([line.rstrip() for line in unified.split("\n")])
    joined = _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()
    return joined or None


def canonical_description(text: str | None) -> str:
    """A description as the merge compares it: content, not layout. Outlook's text rendering of the HTML it
    stores may space paragraphs and runs of blanks differently from what we wrote, so blank lines and
    repeated blanks do not count."""
    lines = (_BLANKS.sub(" ", line).strip() for line in (text or "").split("\n"))
    return "\n".join(line for line in lines if line)


_BLANKS = re.compile(r"[ \t]+")


def _without_teams_block(lines: list[str]) -> list[str]:
    """Drop each run from a line of underscores to the next one (or the end) that mentions Microsoft Teams."""
    kept: list[str] = []
    index = 0
    while index < len(lines):
        if _RULE.match(lines[index].strip()):
            closing = next(
                (later for later in range(index + 1, len(lines)) if _RULE.match(lines[later].strip())),
                None,
            )
            block_end = closing if closing is not None else len(lines) - 1
            if any(_TEAMS_MARK in line for line in lines[index : block_end + 1]):
                index = block_end + 1
                continue
        kept.append(lines[index])
        index += 1
    return kept
