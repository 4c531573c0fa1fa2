"""NCRONTAB schedules as the Azure Functions timer trigger reads them: six fields, seconds first.

``{second} {minute} {hour} {day} {month} {day-of-week}``, e.g. ``0 0 */6 * * *`` (every six hours on the
hour). Each field takes ``*``, numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n`` (from ``a`` to
the field's maximum), lists ``a,b-c``, and for months and days of the week English names or prefixes of
them (``Jan``, ``January``, ``Mon``), case-insensitive. Days of the week run 0-6, Sunday = 0, as in NCrontab.
When both day-of-month and day-of-week are restricted, a date must match *both* (NCrontab checks the day of
the week after finding the day of the month); classic cron would accept either.

The grammar is checked here, field by field, so a bad schedule fails with a message naming the field; the
calendar arithmetic is croniter's. croniter puts an optional seconds field *last*, so the fields are reordered
before they are handed over. Everything is computed in UTC (the host's default ``WEBSITE_TIME_ZONE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadDateError, croniter

FIELD_NAMES = ("second", "minute", "hour", "day", "month", "day-of-week")
_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_NAMES: dict[int, tuple[str, ...]] = {4: _MONTH_NAMES, 5: _DAY_NAMES}


class NcrontabError(ValueError):
    """A schedule that is not a valid six-field NCRONTAB expression; the message names the field."""


@dataclass(frozen=True)
class NcrontabSchedule:
    expression: str
    # The values each field allows, seconds first; None where the field is '*' (every value).
    fields: tuple[frozenset[int] | None, ...]

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (naive datetimes are taken as UTC)."""
        return self.occurrences(after, 1)[0]

    def occurrences(self, after: datetime, count: int) -> tuple[datetime, ...]:
        if count < 0:
            raise ValueError("count must not be negative")
        start = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
        iterator = croniter(self._croniter_expression(), start, ret_type=datetime, day_or=False)
        try:
            return tuple(iterator.get_next(datetime) for _ in range(count))
        except CroniterBadDateError as error:
            raise NcrontabError(f"schedule {self.expression!r} has no occurrence after {start}") from error

    def _croniter_expression(self) -> str:
        def text(values: frozenset[int] | None) -> str:
            return "*" if values is None else ",".join(str(value) for value in sorted(values))

        seconds, *rest = (text(values) for values in self.fields)
        # croniter's six-field form is minute hour day month day-of-week SECOND.
        return " ".join([*rest, seconds])


def parse(expression: str) -> NcrontabSchedule:
    """Parse a six-field NCRONTAB expression, or raise ``NcrontabError`` saying what is wrong."""
    parts = expression.split()
    if len(parts) != len(FIELD_NAMES):
        hint = (
            f"; five fields is cron without seconds: NCRONTAB puts seconds first, e.g. '0 {expression}'"
            if len(parts) == len(FIELD_NAMES) - 1
            else ""
        )
        raise NcrontabError(
            f"schedule {expression!r} has {len(parts)} fields; NCRONTAB needs 6: "
            f"{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}{hint}"
        )
    fields = tuple(_parse_field(index, part) for index, part in enumerate(parts))
    schedule = NcrontabSchedule(expression=" ".join(parts), fields=fields)
    # A schedule such as '0 0 0 30 2 *' (30 February) parses but never fires: say so now, not at run time.
    try:
        schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))
    except NcrontabError:
        raise NcrontabError(f"schedule {expression!r} never occurs") from None
    return schedule


def next_occurrences(expression: str, after: datetime, count: int) -> tuple[datetime, ...]:
    """The next ``count`` occurrences of ``expression`` strictly after ``after``, in UTC."""
    return parse(expression).occurrences(after, count)


def _parse_field(index: int, text: str) -> frozenset[int] | None:
    name = FIELD_NAMES[index]
    low, high = _RANGES[index]
    if text == "*":
        return None
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise NcrontabError(f"{name} field {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise NcrontabError(f"{name} field {item!r}: the step after '/' must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = _parse_value(index, first_text), _parse_value(index, last_text)
            if first > last:
                raise NcrontabError(f"{name} field {item!r}: the range runs backwards")
        else:
            first = _parse_value(index, base)
            # 'a/n' runs from a to the field's maximum, as in NCrontab.
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return None if values == set(range(low, high + 1)) else frozenset(values)


def _parse_value(index: int, text: str) -> int:
    name = FIELD_NAMES[index]
    low, high = _RANGES[index]
    if text.isdigit():
        value = int(text)
        if not low <= value <= high:
            raise NcrontabError(f"{name} value {value} is out of range {low}-{high}")
        return value
    names = _NAMES.get(index)
    if names is None or not text.isalpha():
        raise NcrontabError(f"{name} value {text!r} is not a number from {low} to {high}")
    for offset, full in enumerate(names):
        if full.lower().startswith(text.lower()):
            return low + offset
    raise NcrontabError(f"{name} value {text!r} is not a known name (use one of {', '.join(names)})")
