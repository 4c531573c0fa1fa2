"""The occurrences of a series, computed from its recurrence (pure: calendar arithmetic, no I/O).

Terminology
-----------
series zone
    The zone the pattern is evaluated in: ``range.recurrence_time_zone``, else the activity's zone (UTC for an
    all-day series without one). Occurrences keep the master's wall-clock time there, so a weekly 09:00
    meeting stays at 09:00 across a DST change while its UTC instant moves.
original start (occurrence key)
    Where the pattern puts an occurrence, whatever happened to it later: the UTC instant of its start for a
    timed series (Graph's ``originalStart``), its local date for an all-day series. Overrides and
    cancellations are keyed by it (``occurrence_key`` normalizes a value into one).
window
    The span an expansion or an ``/instances`` listing covers. An occurrence belongs to a window when its
    span overlaps it (a zero-length one when it starts inside), as calendarView and ``/instances`` do.

Outlook's rules, as ``devkit/graph_emulator/recurrence.py`` keeps them (tests compare the two): weeks start
on ``firstDayOfWeek`` (default sunday) and an interval of weeks counts from the week that holds
``range.startDate``; a day of month past the month's end falls on its last day (so 29 February yearly is
28 February in other years); ``relativeMonthly``/``relativeYearly`` with several days take the
``index``-th day of the month that is any of them; ``numbered`` counts occurrences from the start date; an
``endDate`` is inclusive. A local start time that DST skips is read with the offset before the change
(``fold=0``), as the emulator does.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.model import Activity, AllDay, Recurrence, RecurrencePattern, Timed
from sync_core.domain.timezones import UnknownTimeZoneError, iana_name, zone

DAYS_OF_WEEK: tuple[str, ...] = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
WEEK_INDEXES: tuple[str, ...] = ("first", "second", "third", "fourth", "last")
# Python's weekday() numbers Monday 0 … Sunday 6.
_WEEKDAY = {name: (number - 1) % 7 for number, name in enumerate(DAYS_OF_WEEK)}
# A walk over candidate dates stops after this many, whatever the range says: a noEnd daily series walked
# to a date centuries ahead (a CRM sending "9999-01-01") must not cost millions of steps.
MAX_DATES_WALKED = 100_000
# The last date a series may have (the candidates stop there): dates end in 9999, and a step past it raises.
_LAST_DAY = date(9998, 12, 31)

OccurrenceKey = datetime | date


@dataclass(frozen=True)
class Window:
    """A span of time, start inclusive, end exclusive."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a window needs aware datetimes")
        if self.end < self.start:
            raise ValueError("a window must not end before it starts")

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether an item from ``start`` to ``end`` shows in the window (as calendarView decides)."""
        if start == end:
            return self.start <= start < self.end
        return start < self.end and end > self.start

    def shrunk(self, margin: timedelta) -> Window:
        """The window less ``margin`` at each end (empty, not inverted, when the margin is too wide)."""
        start, end = self.start + margin, self.end - margin
        return Window(start, max(start, end))


@dataclass(frozen=True)
class Occurrence:
    """One occurrence where the pattern puts it: datetimes for a timed series, dates for an all-day one."""

    original_start: OccurrenceKey
    start: datetime | date
    end: datetime | date


@dataclass(frozen=True)
class Expansion:
    """The occurrences found, in order; ``truncated``: more exist than ``max_occurrences`` let through."""

    occurrences: tuple[Occurrence, ...]
    truncated: bool

    @property
    def keys(self) -> tuple[OccurrenceKey, ...]:
        return tuple(occurrence.original_start for occurrence in self.occurrences)


# --- dates ------------------------------------------------------------------------------------------------


def occurrence_dates(recurrence: Recurrence) -> Iterator[date]:
    """Every occurrence date of the series in order (local dates in the series zone).

    Infinite for a ``noEnd`` series: the caller stops it. Stops after ``MAX_DATES_WALKED`` candidates.
    A pattern that lacks what its type needs (a weekly one without days) has no dates.
    """
    return (day for day in _walk(recurrence) if day is not None)


def _walk(recurrence: Recurrence) -> Iterator[date | None]:
    """``occurrence_dates``, ending with None when the walk limit, not the range, stopped it."""
    span = recurrence.range
    if span.type is RangeType.NUMBERED and not span.number_of_occurrences:
        return
    if span.type is RangeType.END_DATE and span.end_date is None:
        return
    produced = 0
    for walked, day in enumerate(_candidates(recurrence.pattern, span.start_date)):
        if walked >= MAX_DATES_WALKED:
            yield None
            return
        if day < span.start_date:
            continue
        if span.type is RangeType.END_DATE and span.end_date is not None and day > span.end_date:
            return
        yield day
        produced += 1
        if span.type is RangeType.NUMBERED and produced >= (span.number_of_occurrences or 0):
            return


def _candidates(pattern: RecurrencePattern, start: date) -> Iterator[date]:
    """Dates that fit the pattern, ascending, from the period holding ``start`` (some may be earlier)."""
    step = max(1, pattern.interval)
    days = sorted({_WEEKDAY[day] for day in pattern.days_of_week if day in _WEEKDAY})
    kind = pattern.type
    if kind is PatternType.DAILY:
        yield from _every(start, timedelta(days=step))
    elif kind is PatternType.WEEKLY:
        if days:
            first = _WEEKDAY.get(pattern.first_day_of_week, _WEEKDAY["sunday"])
            offsets = sorted((weekday - first) % 7 for weekday in days)
            week_start = start - timedelta(days=(start.weekday() - first) % 7)
            for week in _every(week_start, timedelta(weeks=step)):
                yield from (week + timedelta(days=offset) for offset in offsets)
    elif kind in (PatternType.ABSOLUTE_MONTHLY, PatternType.RELATIVE_MONTHLY):
        yield from _monthly(pattern, start, step, days)
    else:
        yield from _yearly(pattern, start, step, days)


def _every(first: date, step: timedelta) -> Iterator[date]:
    day = first
    while day <= _LAST_DAY:
        yield day
        try:
            day += step
        except OverflowError:
            return


def _monthly(pattern: RecurrencePattern, start: date, step: int, days: list[int]) -> Iterator[date]:
    if pattern.type is PatternType.ABSOLUTE_MONTHLY and pattern.day_of_month is None:
        return
    if pattern.type is PatternType.RELATIVE_MONTHLY and not days:
        return
    months = start.year * 12 + start.month - 1
    while months < (_LAST_DAY.year + 1) * 12:
        year, month = divmod(months, 12)
        if pattern.type is PatternType.ABSOLUTE_MONTHLY:
            assert pattern.day_of_month is not None
            yield _clamped(year, month + 1, pattern.day_of_month)
        else:
            yield _relative_day(year, month + 1, days, pattern.index)
        months += step


def _yearly(pattern: RecurrencePattern, start: date, step: int, days: list[int]) -> Iterator[date]:
    month = pattern.month
    if month is None or not 1 <= month <= 12:
        return
    if pattern.type is PatternType.ABSOLUTE_YEARLY and pattern.day_of_month is None:
        return
    if pattern.type is PatternType.RELATIVE_YEARLY and not days:
        return
    year = start.year
    while year <= _LAST_DAY.year:
        if pattern.type is PatternType.ABSOLUTE_YEARLY:
            assert pattern.day_of_month is not None
            yield _clamped(year, month, pattern.day_of_month)
        else:
            yield _relative_day(year, month, days, pattern.index)
        year += step


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(max(day, 1), calendar.monthrange(year, month)[1]))


def _relative_day(year: int, month: int, weekdays: list[int], index: str) -> date:
    last = calendar.monthrange(year, month)[1]
    matches = [
        date(year, month, day) for day in range(1, last + 1) if date(year, month, day).weekday() in weekdays
    ]
    if index == "last":
        return matches[-1]
    position = WEEK_INDEXES.index(index) if index in WEEK_INDEXES else 0
    return matches[min(position, len(matches) - 1)]


# --- occurrences ------------------------------------------------------------------------------------------


def expand_timed(
    recurrence: Recurrence,
    *,
    local_start: time,
    duration: timedelta,
    zone_name: str,
    window: Window | None,
    max_occurrences: int,
) -> Expansion:
    """The occurrences of a timed series within ``window`` (all of them when None), at most
    ``max_occurrences``: each occurrence date at ``local_start`` in ``zone_name``, lasting ``duration``.
    Keys are UTC instants; start and end are in the series zone."""
    series_zone = zone(zone_name)
    found: list[Occurrence] = []
    for day in _walk(recurrence):
        if day is None:
            return Expansion(tuple(found), truncated=True)
        start = datetime.combine(day, local_start).replace(tzinfo=series_zone, fold=0)
        key = start.astimezone(UTC)
        end = key + duration
        if window is not None and key >= window.end:
            break
        if window is not None and not window.overlaps(key, end):
            continue
        if len(found) >= max_occurrences:
            return Expansion(tuple(found), truncated=True)
        found.append(Occurrence(key, key.astimezone(series_zone), end.astimezone(series_zone)))
    return Expansion(tuple(found), truncated=False)


def expand_all_day(
    recurrence: Recurrence, *, days: int, zone_name: str, window: Window | None, max_occurrences: int
) -> Expansion:
    """The occurrences of an all-day series within ``window``, each ``days`` long; the window is compared
    with the occurrences' midnights in ``zone_name``. Keys are the local dates."""
    series_zone = zone(zone_name)
    found: list[Occurrence] = []
    for day in _walk(recurrence):
        if day is None:
            return Expansion(tuple(found), truncated=True)
        end_day = day + timedelta(days=days)
        starts_at, ends_at = _midnight(day, series_zone), _midnight(end_day, series_zone)
        if window is not None and starts_at >= window.end:
            break
        if window is not None and not window.overlaps(starts_at, ends_at):
            continue
        if len(found) >= max_occurrences:
            return Expansion(tuple(found), truncated=True)
        found.append(Occurrence(day, day, end_day))
    return Expansion(tuple(found), truncated=False)


def expand_series(activity: Activity, *, window: Window | None, max_occurrences: int) -> Expansion:
    """The occurrences of ``activity``'s series within ``window``: the pattern evaluated in the series zone
    at the master's local start time, each lasting as long as the master. Empty for a single item."""
    recurrence = activity.recurrence
    if recurrence is None:
        return Expansion((), truncated=False)
    zone_name = series_zone(activity)
    when = activity.when
    if isinstance(when, AllDay):
        return expand_all_day(
            recurrence,
            days=(when.end - when.start).days,
            zone_name=zone_name,
            window=window,
            max_occurrences=max_occurrences,
        )
    return expand_timed(
        recurrence,
        local_start=when.start.astimezone(zone(zone_name)).time(),
        duration=_duration(when),
        zone_name=zone_name,
        window=window,
        max_occurrences=max_occurrences,
    )


def series_zone(activity: Activity) -> str:
    """The IANA zone ``activity``'s pattern is evaluated in (see the module's terminology)."""
    recurrence = activity.recurrence
    for candidate in (
        recurrence.range.recurrence_time_zone if recurrence is not None else None,
        activity.when.time_zone,
    ):
        if candidate:
            try:
                return iana_name(candidate)
            except UnknownTimeZoneError:
                continue
    return "UTC"


def occurrence_key(activity: Activity, value: datetime | date) -> OccurrenceKey:
    """``value`` as a key of ``activity``'s occurrences: a UTC instant for a timed series; for an all-day
    series a date (an instant, such as Graph's ``originalStart``, is read as its date in the series zone)."""
    if activity.is_all_day:
        if isinstance(value, datetime):
            return value.astimezone(zone(series_zone(activity))).date()
        return value
    if not isinstance(value, datetime):
        raise ValueError("a timed series keys its occurrences by instants")
    return value.astimezone(UTC)


def occurrence_times(activity: Activity, key: OccurrenceKey) -> tuple[datetime | date, datetime | date]:
    """Where the occurrence keyed ``key`` would be unchanged: its start and its end (the master's length)."""
    when = activity.when
    if isinstance(when, AllDay):
        day = occurrence_key(activity, key)
        assert not isinstance(day, datetime)
        return day, day + (when.end - when.start)
    if not isinstance(key, datetime):
        raise ValueError("a timed series keys its occurrences by instants")
    event_zone = zone(when.time_zone)
    return key.astimezone(event_zone), (key.astimezone(UTC) + _duration(when)).astimezone(event_zone)


def is_occurrence(activity: Activity, key: OccurrenceKey) -> bool | None:
    """Whether the series puts an occurrence at ``key``; None when it lies too far ahead to walk to."""
    return are_occurrences(activity, (key,))[0]


def are_occurrences(activity: Activity, keys: Sequence[datetime | date]) -> tuple[bool | None, ...]:
    """``is_occurrence`` for each of ``keys``, in one walk over the series' dates (dates only, up to the
    latest key). A key of the wrong kind (a date for a timed series) is no occurrence."""
    recurrence = activity.recurrence
    normalized: list[OccurrenceKey | None] = []
    for given in keys:
        try:
            normalized.append(occurrence_key(activity, given))
        except ValueError:
            normalized.append(None)
    present = [key for key in normalized if key is not None]
    if recurrence is None or not present:
        return tuple(False for _ in keys)
    series_tz = zone(series_zone(activity))
    when = activity.when
    local_start = None if isinstance(when, AllDay) else when.start.astimezone(series_tz).time()

    def local_day(key: OccurrenceKey) -> date | None:
        try:
            return key.astimezone(series_tz).date() if isinstance(key, datetime) else key
        except OverflowError:
            return None  # past the end of the calendar in the series' zone: no occurrence is there

    days = {key: local_day(key) for key in present}
    wanted = {day for day in days.values() if day is not None}
    if not wanted:
        return tuple(False for _ in keys)
    last = min(max(wanted), _LAST_DAY)
    found: set[OccurrenceKey] = set()
    walked_to: date | None = None
    exhausted = False
    for day in _walk(recurrence):
        if day is None:
            exhausted = True
            break
        walked_to = day
        if local_start is None:
            found.add(day)
        elif wanted & {day - timedelta(days=1), day, day + timedelta(days=1)}:
            # The local date of an instant may differ from its occurrence date when DST skips the start time.
            found.add(datetime.combine(day, local_start).replace(tzinfo=series_tz, fold=0).astimezone(UTC))
        if day > last:
            break
    answers: list[bool | None] = []
    for key in normalized:
        key_day = days.get(key) if key is not None else None
        if key is None or key_day is None:
            answers.append(False)
        elif key in found:
            answers.append(True)
        elif exhausted and (walked_to is None or key_day > walked_to):
            answers.append(None)  # the walk limit came first
        else:
            answers.append(False)
    return tuple(answers)


def series_has_ended(activity: Activity, now: datetime) -> bool:
    """Whether every occurrence of the series has ended by ``now`` (never, for a ``noEnd`` series). For a
    single item: ``activity.has_ended``."""
    if activity.recurrence is None:
        return activity.has_ended(now)
    if activity.recurrence.range.type is RangeType.NO_END:
        return False
    ahead = Window(now, datetime(9999, 1, 1, tzinfo=UTC))
    return not expand_series(activity, window=ahead, max_occurrences=1).occurrences


def _duration(when: Timed) -> timedelta:
    # Instants, not wall clocks: two datetimes sharing a tzinfo subtract as wall-clock times in Python.
    return when.end.astimezone(UTC) - when.start.astimezone(UTC)


def _midnight(day: date, day_zone: tzinfo) -> datetime:
    return datetime.combine(day, time()).replace(tzinfo=day_zone).astimezone(UTC)
