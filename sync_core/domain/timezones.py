"""Time zones on Graph's wire: Windows names (``Pacific Standard Time``) ⇄ IANA zones, and
``dateTimeTimeZone`` values (``{"dateTime": "2017-09-04T12:00:00.0000000", "timeZone": "…"}``) ⇄ aware
datetimes.

Graph sends local wall-clock times with seven fractional digits and a zone name that is usually Windows,
may be IANA, and may be ``tzone://Microsoft/Custom`` (a zone defined inside the event; its offsets are not
sent, so the only safe reading is the UTC instant Graph gives with ``Prefer: outlook.timezone="UTC"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sync_core.domain.windows_zones import WINDOWS_TO_IANA

CUSTOM_ZONE = "tzone://Microsoft/Custom"
_IANA_TO_WINDOWS = {iana: windows for windows, iana in WINDOWS_TO_IANA.items()}


class UnknownTimeZoneError(ValueError):
    """A zone name that is neither a known Windows name nor an IANA zone."""


@cache
def zone(name: str) -> tzinfo:
    """The zone for a Windows or IANA name; ``UTC`` and the custom-zone marker read as UTC."""
    if name in {"UTC", "Etc/UTC", "Coordinated Universal Time", CUSTOM_ZONE, ""}:
        return UTC
    iana = WINDOWS_TO_IANA.get(name, name)
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZoneError(name) from exc


def iana_name(name: str) -> str:
    """The IANA name for a Windows or IANA name (CRM side speaks IANA)."""
    if name in {"UTC", "Etc/UTC", CUSTOM_ZONE, ""}:
        return "UTC"
    iana = WINDOWS_TO_IANA.get(name, name)
    zone(iana)  # raises for an unknown name
    return iana


def windows_name(iana: str) -> str:
    """The Windows name Graph prefers for an IANA zone; unmapped IANA names pass as is (Graph takes them)."""
    if iana in {"UTC", "Etc/UTC"}:
        return "UTC"
    return _IANA_TO_WINDOWS.get(iana, iana)


def parse_graph_datetime(value: Mapping[str, object]) -> datetime:
    """An aware datetime from a Graph ``dateTimeTimeZone``; raises ``ValueError`` on a malformed value."""
    raw = value.get("dateTime")
    zone_name = value.get("timeZone")
    if not isinstance(raw, str) or not isinstance(zone_name, str):
        raise ValueError("dateTimeTimeZone needs string dateTime and timeZone")
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone(zone_name))


def format_graph_datetime(moment: datetime, zone_name: str) -> dict[str, str]:
    """A Graph ``dateTimeTimeZone`` for an aware datetime, as wall-clock time in ``zone_name``."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is required")
    local = moment.astimezone(zone(zone_name))
    return {
        "dateTime": local.replace(tzinfo=None).isoformat(timespec="microseconds") + "0",
        "timeZone": zone_name,
    }
