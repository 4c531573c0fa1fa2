"""One mailbox's primary calendar: stored events, recurring series, instances, and the change log for delta.

References (``Ref``) name what a client can see:
- ``("e", key)``: a stored event; as an *instance* it exists only while the event is a single instance.
- ``("o", key, original_start)``: an occurrence of series ``key`` (an exception once it was changed).
- ``("s", key)``: logged when series ``key`` changed; delta expands it to the series' instances in the window.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from devkit.graph_emulator import timezones
from devkit.graph_emulator.delta import ChangeLog, Window
from devkit.graph_emulator.events import (
    EventRecord,
    ExceptionState,
    RenderOptions,
    When,
    check_times,
    ical_uid,
    render_event,
    teams_block,
    teams_join_url,
    wrap_html,
)
from devkit.graph_emulator.recurrence import Recurrence, occurrence_starts
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.util import (
    UTC,
    Change,
    ChangeKeys,
    GraphError,
    Json,
    etag,
    new_record_key,
    parse_id,
    render_id,
)

Ref = tuple[Any, ...]
TIME_FIELDS = frozenset({"start", "end", "recurrence", "isAllDay"})
# What a meeting's copy in an attendee's calendar takes from the organizer's event (invitations.py).
MEETING_FIELDS = (
    "subject", "body", "location", "locations", "isAllDay", "sensitivity", "importance", "isOnlineMeeting",
    "onlineMeetingProvider", "attendees", "responseRequested", "allowNewTimeProposals", "hideAttendees",
)  # fmt: skip
CANCELED_PREFIX = "Canceled: "
NOT_RESPONDED = {"response": "notResponded", "time": "0001-01-01T00:00:00Z"}


@dataclass(frozen=True)
class Owner:
    user_id: str
    display_name: str
    address: str
    tenant_id: str


@dataclass
class Instance:
    ref: Ref
    record: EventRecord
    exception: ExceptionState | None
    start: When
    end: When
    type: str
    original_start: dt.datetime | None = None

    def overlaps(self, window: Window) -> bool:
        if window is None:
            return True
        start, end = self.start.utc, self.end.utc
        if start == end:
            return window[0] <= start < window[1]
        return start < window[1] and end > window[0]


@dataclass(frozen=True)
class Meeting:
    """The organizer's event as its attendees' copies get it (a snapshot: no live references)."""

    link: tuple[str, bytes]  # (organizer's user id, organizer's record key)
    seq: int
    organizer: Json
    props: Json  # the MEETING_FIELDS the organizer's event has
    start: When
    end: When
    recurrence: Recurrence | None
    exceptions: dict[dt.datetime, tuple[When, When, Json]]
    cancelled_occurrences: frozenset[dt.datetime]
    ical_key: bytes
    ical_uid: str
    join_url: str | None
    cancelled: bool = False

    def state(self) -> tuple[Any, ...]:
        """What the copy shows: cancelled meetings keep their details with "Canceled: " subjects."""
        props, exceptions = dict(self.props), dict(self.exceptions)
        if self.cancelled:
            props["subject"] = _canceled(props.get("subject"))
            exceptions = {
                original: (start, end, {**overrides, "subject": _canceled(overrides["subject"])})
                if "subject" in overrides
                else (start, end, overrides)
                for original, (start, end, overrides) in exceptions.items()
            }
        return (props, self.start, self.end, self.recurrence, exceptions, self.cancelled_occurrences,
                self.cancelled)  # fmt: skip


def _canceled(subject: Any) -> str:
    text = str(subject or "")
    return text if text.startswith(CANCELED_PREFIX) else CANCELED_PREFIX + text


def meeting_props(props: Json) -> Json:
    return {name: props[name] for name in MEETING_FIELDS if name in props}


@dataclass(frozen=True)
class RenderContext:
    options: RenderOptions
    immutable: bool


class Calendar:
    def __init__(
        self, owner: Owner, clock: Clock, change_keys: ChangeKeys, settings: EmulatorSettings
    ) -> None:
        self.owner = owner
        self.log = ChangeLog()
        self._records: dict[bytes, EventRecord] = {}
        self._transactions: dict[str, bytes] = {}
        self._invitations: dict[tuple[str, bytes], bytes] = {}
        self._clock = clock
        self._keys = change_keys
        self._settings = settings

    # --- ids ---

    @staticmethod
    def id_for(ref: Ref, immutable: bool) -> str:
        if ref[0] == "o":
            stamp = int(ref[2].timestamp()).to_bytes(6, "big")
            return render_id(b"\x01" + ref[1][1:] + stamp, immutable)
        return render_id(ref[1], immutable)

    def ref_for(self, event_id: str) -> Ref:
        raw = parse_id(event_id)
        if len(raw) == 17 and raw[0] == 0:
            return ("e", raw)
        if len(raw) == 23 and raw[0] == 1:
            start = dt.datetime.fromtimestamp(int.from_bytes(raw[17:], "big"), UTC)
            return ("o", b"\x00" + raw[1:17], start)
        raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")

    # --- reading ---

    def record(self, key: bytes) -> EventRecord:
        record = self._records.get(key)
        if record is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return record

    def records(self) -> list[EventRecord]:
        return list(self._records.values())

    def find_transaction(self, transaction_id: str) -> EventRecord | None:
        key = self._transactions.get(transaction_id)
        return self._records.get(key) if key else None

    def instance(self, ref: Ref) -> Instance | None:
        record = self._records.get(ref[1])
        if record is None:
            return None
        if ref[0] == "e":
            if record.recurrence is not None:
                return None
            return Instance(ref, record, None, record.start, record.end, "singleInstance")
        if ref[0] != "o" or record.recurrence is None or ref[2] in record.cancelled:
            return None
        original = ref[2]
        exception = record.exceptions.get(original)
        if exception is not None:
            return Instance(ref, record, exception, exception.start, exception.end, "exception", original)
        if not self._is_occurrence(record, original):
            return None
        start, end = self._occurrence_times(record, original)
        return Instance(ref, record, None, start, end, "occurrence", original)

    def series_instances(self, record: EventRecord, window: Window) -> list[Instance]:
        result = []
        for original in self._occurrence_starts(record, window[1] if window else None):
            if original in record.cancelled or original in record.exceptions:
                continue
            start, end = self._occurrence_times(record, original)
            candidate = Instance(
                ("o", record.key, original), record, None, start, end, "occurrence", original
            )
            if candidate.overlaps(window):
                result.append(candidate)
        for original, exception in record.exceptions.items():
            ref = ("o", record.key, original)
            candidate = Instance(
                ref, record, exception, exception.start, exception.end, "exception", original
            )
            if candidate.overlaps(window):
                result.append(candidate)
        return sorted(result, key=lambda inst: inst.start.utc)

    def view(self, window: Window) -> list[Instance]:
        """calendarView: single instances, occurrences and exceptions overlapping the window, by start."""
        result: list[Instance] = []
        for record in self._records.values():
            if record.recurrence is None:
                single = Instance(("e", record.key), record, None, record.start, record.end, "singleInstance")
                if single.overlaps(window):
                    result.append(single)
            else:
                result.extend(self.series_instances(record, window))
        return sorted(result, key=lambda inst: inst.start.utc)

    def expand(self, refs: list[Hashable], window: Window) -> list[Hashable]:
        """Turn series markers into the series' current instances in the window (for a delta round)."""
        result: list[Hashable] = []
        for ref in refs:
            assert isinstance(ref, tuple)
            if ref[0] == "s":
                record = self._records.get(ref[1])
                if record is not None and record.recurrence is not None:
                    result.extend(inst.ref for inst in self.series_instances(record, window))
            else:
                result.append(ref)
        return list(dict.fromkeys(result))

    # --- rendering ---

    def render(self, inst: Instance, ctx: RenderContext) -> Json:
        record = inst.record
        props = dict(record.props)
        change_key, created, modified = record.change_key, record.created, record.modified
        series_master_id = None
        ical = record.ical_uid
        if inst.type != "singleInstance":
            series_master_id = self.id_for(("e", record.key), ctx.immutable)
            assert inst.original_start is not None
            zone = timezones.resolve(record.recurrence_zone_name)
            local_day = timezones.to_local(inst.original_start, zone).date()
            ical = ical_uid(record.ical_key or record.key, local_day)
        if inst.exception is not None:
            props.update(inst.exception.overrides)
            change_key, created, modified = (
                inst.exception.change_key,
                inst.exception.created,
                inst.exception.modified,
            )
        times = (created, modified)
        return self._render(
            record, props, inst.ref, inst.type, change_key, times, inst.start, inst.end, ical, ctx,
            series_master_id=series_master_id, original_start=inst.original_start,
        )  # fmt: skip

    def render_record(self, record: EventRecord, ctx: RenderContext) -> Json:
        """A stored event as ``GET /events/{id}`` returns it (series masters carry their recurrence)."""
        recurrence = record.recurrence.to_graph(record.start.zone_name) if record.recurrence else None
        times = (record.created, record.modified)
        return self._render(
            record, record.props, ("e", record.key), record.type, record.change_key, times, record.start,
            record.end, record.ical_uid, ctx, recurrence=recurrence,
        )  # fmt: skip

    def _render(
        self,
        record: EventRecord,
        props: Json,
        ref: Ref,
        event_type: str,
        change_key: str,
        times: tuple[dt.datetime, dt.datetime],
        start: When,
        end: When,
        ical: str,
        ctx: RenderContext,
        **extra: Any,
    ) -> Json:
        organizer = props.get("organizer") or {
            "emailAddress": {"name": self.owner.display_name, "address": self.owner.address}
        }
        address = str(organizer.get("emailAddress", {}).get("address", ""))
        return render_event(
            props,
            event_id=self.id_for(ref, ctx.immutable),
            event_type=event_type,
            change_key=change_key,
            created=times[0],
            modified=times[1],
            start=start,
            end=end,
            ical=ical,
            organizer=organizer,
            is_organizer=address.lower() == self.owner.address.lower(),
            options=ctx.options,
            join_url=record.join_url,
            is_cancelled=record.is_cancelled,
            response=record.response,
            **extra,
        )

    def current_etag(self, ref: Ref) -> str:
        inst = self.instance(ref) if ref[0] == "o" else None
        if inst is not None and inst.exception is not None:
            return etag(inst.exception.change_key)
        return etag(self.record(ref[1]).change_key)

    # --- writing ---

    def create(self, cleaned: Json) -> tuple[EventRecord, list[Change]]:
        transaction = cleaned.get("transactionId")
        if transaction:
            existing = self.find_transaction(transaction)
            if existing is not None:  # a retried create: the first one's event, nothing new
                return existing, []
        start, end = cleaned.pop("start"), cleaned.pop("end")
        recurrence = cleaned.pop("recurrence", None)
        check_times(start, end, bool(cleaned.get("isAllDay")))
        self._check_series_start(recurrence, start)
        now = self._clock.now()
        key = new_record_key()
        record = EventRecord(key, cleaned, start, end, self._keys.next(), now, now, ical_uid(key), recurrence)
        self._apply_online_meeting(record, body_changed=True)
        self._records[key] = record
        if transaction:
            self._transactions[transaction] = key
        self.log.append(("s", key) if recurrence else ("e", key))
        return record, [Change("created", ("e", key), etag(record.change_key))]

    def update(self, ref: Ref, cleaned: Json) -> list[Change]:
        if ref[0] == "o":
            return self._update_occurrence(ref, cleaned)
        record = self.record(ref[1])
        if "transactionId" in cleaned and cleaned.pop("transactionId") != record.props.get("transactionId"):
            raise GraphError(400, "ErrorInvalidRequest", "The transactionId of an event cannot be changed.")
        before = self._horizon_refs(record)
        was_single = record.recurrence is None
        start = cleaned.pop("start", record.start)
        end = cleaned.pop("end", record.end)
        recurrence = cleaned.pop("recurrence", record.recurrence)
        merged = {**record.props, **cleaned}
        check_times(start, end, bool(merged.get("isAllDay")))
        self._check_series_start(recurrence, start)
        series_reset = (start, end, recurrence, bool(merged.get("isAllDay"))) != (
            record.start, record.end, record.recurrence, record.is_all_day
        )  # fmt: skip
        record.props = {k: v for k, v in merged.items() if v is not None or k == "transactionId"}
        record.start, record.end, record.recurrence = start, end, recurrence
        if series_reset:  # Outlook drops a series' exceptions when its time or pattern changes
            record.exceptions.clear()
            record.cancelled.clear()
        self._apply_online_meeting(record, body_changed="body" in cleaned)
        self._touch(record)
        for exception in record.exceptions.values():
            exception.change_key = self._keys.next()
        for gone in sorted(before - self._horizon_refs(record), key=repr):
            self.log.append(gone)
        if was_single or record.recurrence is None:
            self.log.append(("e", record.key))
        if record.recurrence is not None:
            self.log.append(("s", record.key))
        return [Change("updated", ("e", record.key), etag(record.change_key))]

    def delete(self, ref: Ref) -> list[Change]:
        if ref[0] == "o":
            return self._cancel_occurrence(ref)
        record = self.record(ref[1])
        if record.recurrence is not None:
            for gone in sorted(self._horizon_refs(record), key=repr):
                self.log.append(gone)
        del self._records[record.key]
        if record.invitation is not None:
            self._invitations.pop(record.invitation, None)
        transaction = record.props.get("transactionId")
        if transaction:
            self._transactions.pop(transaction, None)
        self.log.append(("s", record.key) if record.recurrence else ("e", record.key))
        return [Change("deleted", ("e", record.key), None)]

    def receive(self, meeting: Meeting, *, create: bool) -> list[Change]:
        """Put the organizer's meeting in this (an attendee's) calendar: a new copy, or the existing copy
        brought up to date (the organizer's version wins over local edits of the meeting's fields)."""
        key = self._invitations.get(meeting.link)
        record = self._records.get(key) if key is not None else None
        if record is None and (not create or meeting.cancelled):
            return []  # the attendee deleted the copy (or never had one): nothing to cancel or update
        if record is not None and record.meeting_seq >= meeting.seq:
            return []  # an older version delivered late
        props, start, end, recurrence, exceptions, cancelled_occurrences, cancelled = meeting.state()
        if record is None:
            now = self._clock.now()
            key = new_record_key()
            copied = {**copy.deepcopy(props), "organizer": copy.deepcopy(meeting.organizer)}
            copied["showAs"] = "tentative"  # Outlook pencils an unanswered meeting in as tentative
            record = EventRecord(
                key, copied, start, end, self._keys.next(), now, now, meeting.ical_uid, recurrence,
                join_url=meeting.join_url, ical_key=meeting.ical_key, meeting_seq=meeting.seq,
                invitation=meeting.link, response=dict(NOT_RESPONDED),
            )  # fmt: skip
            record.exceptions = self._copy_exceptions(record, exceptions)
            record.cancelled = set(cancelled_occurrences)
            self._records[key] = record
            self._invitations[meeting.link] = key
            self.log.append(("s", key) if recurrence else ("e", key))
            return [Change("created", ("e", key), etag(record.change_key))]
        record.meeting_seq = meeting.seq
        current = (
            meeting_props(record.props), record.start, record.end, record.recurrence,
            {o: (e.start, e.end, meeting_props(e.overrides)) for o, e in record.exceptions.items()},
            frozenset(record.cancelled), record.is_cancelled,
        )  # fmt: skip
        if current == (props, start, end, recurrence, exceptions, cancelled_occurrences, cancelled):
            return []
        before = self._horizon_refs(record)
        was_single = record.recurrence is None
        kept = {k: v for k, v in record.props.items() if k not in MEETING_FIELDS}
        record.props = {**kept, **copy.deepcopy(props), "organizer": copy.deepcopy(meeting.organizer)}
        record.start, record.end, record.recurrence = start, end, recurrence
        record.exceptions = self._copy_exceptions(record, exceptions)
        record.cancelled = set(cancelled_occurrences)
        record.is_cancelled, record.join_url = cancelled, meeting.join_url
        self._touch(record)
        for gone in sorted(before - self._horizon_refs(record), key=repr):
            self.log.append(gone)
        if was_single or record.recurrence is None:
            self.log.append(("e", record.key))
        if record.recurrence is not None:
            self.log.append(("s", record.key))
        return [Change("updated", ("e", record.key), etag(record.change_key))]

    def _copy_exceptions(
        self, record: EventRecord, exceptions: dict[dt.datetime, tuple[When, When, Json]]
    ) -> dict[dt.datetime, ExceptionState]:
        """The organizer's changed occurrences on a copy; unchanged ones keep their version."""
        result = {}
        now = self._clock.now()
        for original, (start, end, overrides) in exceptions.items():
            old = record.exceptions.get(original)
            unchanged = old is not None and (old.start, old.end, meeting_props(old.overrides)) == (
                start, end, overrides
            )  # fmt: skip
            if old is not None and unchanged:
                result[original] = old
            else:
                created = old.created if old else now
                result[original] = ExceptionState(
                    start, end, copy.deepcopy(overrides), self._keys.next(), created, now
                )
        return result

    def _update_occurrence(self, ref: Ref, cleaned: Json) -> list[Change]:
        inst = self._require_instance(ref)
        if "recurrence" in cleaned or "transactionId" in cleaned:
            raise GraphError(
                400, "ErrorInvalidRequest", "An occurrence cannot change the series' recurrence."
            )
        record = inst.record
        start, end = cleaned.pop("start", inst.start), cleaned.pop("end", inst.end)
        overrides = dict(inst.exception.overrides) if inst.exception else {}
        overrides.update(cleaned)
        check_times(start, end, bool({**record.props, **overrides}.get("isAllDay")))
        now = self._clock.now()
        assert inst.original_start is not None
        created = inst.exception.created if inst.exception else now
        record.exceptions[inst.original_start] = ExceptionState(
            start, end, overrides, self._keys.next(), created, now
        )
        self._touch(record)
        self.log.append(ref)
        self.log.append(("s", record.key))
        return [Change("updated", ("e", record.key), etag(record.change_key))]

    def _cancel_occurrence(self, ref: Ref) -> list[Change]:
        inst = self._require_instance(ref)
        assert inst.original_start is not None
        inst.record.exceptions.pop(inst.original_start, None)
        inst.record.cancelled.add(inst.original_start)
        self._touch(inst.record)
        self.log.append(ref)
        self.log.append(("s", inst.record.key))
        return [Change("updated", ("e", inst.record.key), etag(inst.record.change_key))]

    # --- helpers ---

    def _require_instance(self, ref: Ref) -> Instance:
        inst = self.instance(ref)
        if inst is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return inst

    def _touch(self, record: EventRecord) -> None:
        """A new version of the stored item (occurrences show the master's; exceptions keep their own)."""
        record.change_key = self._keys.next()
        record.modified = self._clock.now()

    def _check_series_start(self, recurrence: Recurrence | None, start: When) -> None:
        if recurrence is None:
            return
        zone = timezones.resolve(recurrence.range.time_zone or start.zone_name)
        if timezones.to_local(start.utc, zone).date() != recurrence.range.start_date:
            raise GraphError(
                400,
                "ErrorInvalidRequest",
                "The recurrence range startDate must be the date of the event's start.",
            )

    def _apply_online_meeting(self, record: EventRecord, *, body_changed: bool) -> None:
        props = record.props
        if not props.get("isOnlineMeeting"):
            return
        provider = props.setdefault("onlineMeetingProvider", "teamsForBusiness")
        if provider == "unknown":
            props["onlineMeetingProvider"] = provider = "teamsForBusiness"
        if provider != "teamsForBusiness":
            return
        if record.join_url is None:
            record.join_url = teams_join_url(record.key, self.owner.tenant_id, self.owner.user_id)
            body_changed = True
        if body_changed and self._settings.teams_block_in_body:
            body = dict(props.get("body") or {"contentType": "html", "content": ""})
            content = str(body.get("content", ""))
            if body.get("contentType") == "text":
                content = wrap_html(content, "text")
            props["body"] = {"contentType": "html", "content": content + teams_block(record.join_url)}

    def _occurrence_starts(self, record: EventRecord, until: dt.datetime | None) -> Iterator[dt.datetime]:
        assert record.recurrence is not None
        zone = timezones.resolve(record.recurrence_zone_name)
        start_time = timezones.to_local(record.start.utc, zone).time()
        return occurrence_starts(record.recurrence, start_time=start_time, zone=zone, until=until)

    def _is_occurrence(self, record: EventRecord, original: dt.datetime) -> bool:
        return any(start == original for start in self._occurrence_starts(record, original))

    def _occurrence_times(self, record: EventRecord, original: dt.datetime) -> tuple[When, When]:
        if record.is_all_day:
            zone = timezones.resolve(record.recurrence_zone_name)
            day = timezones.to_local(original, zone).date()
            local = dt.datetime.combine(day, dt.time(0, 0))
            return When(local, record.start.zone_name), When(
                local + (record.end.local - record.start.local), record.end.zone_name
            )
        start_zone = timezones.resolve(record.start.zone_name)
        end_zone = timezones.resolve(record.end.zone_name)
        start = When(timezones.to_local(original, start_zone), record.start.zone_name)
        end = When(timezones.to_local(original + record.duration, end_zone), record.end.zone_name)
        return start, end

    def _horizon_refs(self, record: EventRecord) -> set[Ref]:
        """The instance references the record has now, within the series horizon around the clock."""
        if record.recurrence is None:
            return {("e", record.key)}
        now = self._clock.now()
        before, after = self._settings.series_horizon_days
        window = (now - dt.timedelta(days=before), now + dt.timedelta(days=after))
        return {inst.ref for inst in self.series_instances(record, window)}
