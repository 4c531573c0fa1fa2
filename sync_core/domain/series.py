"""A series seen occurrence by occurrence (pure): one occurrence as an Activity, a series cut to a window,
and overrides carried over when the series' times or pattern change.

Both sides key overrides and cancellations by original start (``recurrence.occurrence_key``); the helpers
here compare keys only after normalizing them, so a CRM's ``10:00+01:00`` and Graph's ``09:00Z`` are one key.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta

from sync_core.domain.model import Activity, AllDay, OccurrenceOverride, Timed
from sync_core.domain.recurrence import (
    OccurrenceKey,
    Window,
    expand_series,
    is_occurrence,
    occurrence_key,
    occurrence_times,
    series_zone,
)
from sync_core.domain.timezones import zone

# Outlook's instances are listed over the sync window and judged over the window less this margin at each
# end (``series_from_graph``): an exception moved by less than this is never mistaken for a cancellation.
INSTANCE_MARGIN = timedelta(days=1)


def sync_window(now: datetime, past_days: int, future_days: int) -> Window:
    """The span a series' instances are read and written in: the sync window (design §5)."""
    return Window(now - timedelta(days=past_days), now + timedelta(days=future_days))


def judged_window(now: datetime, past_days: int, future_days: int) -> Window:
    """The part of the sync window where both sides' overrides and cancellations are compared."""
    return sync_window(now, past_days, future_days).shrunk(INSTANCE_MARGIN)


def overlaps_window(series: Activity, window: Window) -> bool:
    """Whether a series has an occurrence in ``window`` (where the pattern puts it)."""
    return bool(expand_series(series, window=window, max_occurrences=1).occurrences)


def override_of(series: Activity, key: OccurrenceKey) -> OccurrenceOverride | None:
    """The override of the occurrence keyed ``key``, if the series has one."""
    wanted = occurrence_key(series, key)
    return next(
        (o for o in series.occurrence_overrides if _key(series, o.original_start) == wanted),
        None,
    )


def is_cancelled(series: Activity, key: OccurrenceKey) -> bool:
    wanted = occurrence_key(series, key)
    return any(_key(series, moment) == wanted for moment in series.cancelled_occurrences)


def occurrence_activity(series: Activity, key: OccurrenceKey) -> Activity:
    """The occurrence keyed ``key`` as a single Activity: the series' values, its override applied."""
    start, end = occurrence_times(series, key)
    override = override_of(series, key)
    if override is not None and (override.start is not None or override.end is not None):
        start = override.start if override.start is not None else start
        end = override.end if override.end is not None else end
    when = series.when
    occurrence_when: Timed | AllDay
    if isinstance(when, AllDay):
        assert not isinstance(start, datetime)
        assert not isinstance(end, datetime)
        occurrence_when = AllDay(start, end, when.time_zone)
    else:
        assert isinstance(start, datetime)
        assert isinstance(end, datetime)
        occurrence_when = Timed(start, end, when.time_zone)
    single = replace(
        series, when=occurrence_when, recurrence=None, occurrence_overrides=(), cancelled_occurrences=()
    )
    if override is None:
        return single
    return replace(
        single,
        subject=override.subject if override.subject is not None else single.subject,
        description=override.description if override.description is not None else single.description,
        location=override.location if override.location is not None else single.location,
        attendees=override.attendees if override.attendees is not None else single.attendees,
    )


def within(series: Activity, window: Window) -> Activity:
    """``series`` with only the overrides and cancellations of occurrences whose original span overlaps
    ``window``: what a read of Outlook's instances in that window can know, so what both sides are compared
    on."""
    if series.recurrence is None:
        return series
    return replace(
        series,
        occurrence_overrides=tuple(
            o for o in series.occurrence_overrides if occurs_within(series, o.original_start, window)
        ),
        cancelled_occurrences=tuple(
            moment for moment in series.cancelled_occurrences if occurs_within(series, moment, window)
        ),
    )


def rekeyed(series: Activity, previous: Activity) -> Activity:
    """``series`` (new times or pattern) with ``previous``'s overrides and cancellations carried over: each
    keeps its local date in the series zone and takes the new series' occurrence on that date; one whose
    date has no occurrence any more is dropped. A moved occurrence keeps where it was moved to.

    Outlook keeps an exception when the whole series is retimed; this is how the same survives a retime
    made in the CRM (or read from Outlook with the old keys still in the CRM)."""
    if series.recurrence is None:
        return replace(series, occurrence_overrides=(), cancelled_occurrences=())
    overrides = []
    for override in previous.occurrence_overrides:
        new_key = _same_day_key(series, previous, override.original_start)
        if new_key is not None:
            overrides.append(replace(override, original_start=new_key))
    cancelled = [
        new_key
        for moment in previous.cancelled_occurrences
        if (new_key := _same_day_key(series, previous, moment)) is not None
    ]
    return replace(series, occurrence_overrides=tuple(overrides), cancelled_occurrences=tuple(cancelled))


def _same_day_key(series: Activity, previous: Activity, moment: OccurrenceKey) -> OccurrenceKey | None:
    old_key = occurrence_key(previous, moment)
    day = old_key.astimezone(zone(series_zone(previous))).date() if isinstance(old_key, datetime) else old_key
    when = series.when
    if isinstance(when, AllDay):
        candidate: OccurrenceKey = day
    else:
        new_zone = zone(series_zone(series))
        local_start = when.start.astimezone(new_zone).time()
        candidate = occurrence_key(
            series, datetime.combine(day, local_start).replace(tzinfo=new_zone, fold=0)
        )
    return candidate if is_occurrence(series, candidate) else None


def _key(series: Activity, moment: datetime | date) -> OccurrenceKey | None:
    try:
        return occurrence_key(series, moment)
    except ValueError:
        return None


def occurs_within(series: Activity, moment: datetime | date, window: Window) -> bool:
    """Whether the occurrence originally at ``moment`` overlaps ``window`` where the pattern put it."""
    key = _key(series, moment)
    if key is None:
        return False
    start, end = occurrence_times(series, key)
    if isinstance(start, datetime) and isinstance(end, datetime):
        return window.overlaps(start, end)
    assert not isinstance(start, datetime)
    assert not isinstance(end, datetime)
    day_zone = zone(series_zone(series))
    return window.overlaps(
        datetime.combine(start, time(), tzinfo=day_zone), datetime.combine(end, time(), tzinfo=day_zone)
    )
