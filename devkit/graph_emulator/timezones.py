"""Time zones as Graph names them: Windows names (CLDR ``windowsZones.json``), IANA ids, or ``UTC``.

``windows_zones.json`` copies ``../shared/graph-reference/windowsZones.json`` (CLDR; see its SOURCES.md).
The product keeps its own mapping in ``sync_core/domain``; this one only serves the emulator.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from devkit.graph_emulator.util import GraphError

WINDOWS_ZONES_PATH = Path(__file__).with_name("windows_zones.json")
UTC_NAMES = frozenset({"utc", "etc/utc", "coordinated universal time", "gmt"})


@functools.cache
def windows_zones() -> dict[str, str]:
    data = json.loads(WINDOWS_ZONES_PATH.read_text(encoding="utf-8"))
    return {str(name): str(iana) for name, iana in data.items()}


@functools.cache
def _lower_windows() -> dict[str, str]:
    return {name.lower(): iana for name, iana in windows_zones().items()}


def resolve(name: str) -> dt.tzinfo:
    """The zone for a Graph time-zone name; ``GraphError`` 400 (as Graph answers) when it is unknown."""
    if not isinstance(name, str) or not name.strip():
        raise unsupported(str(name))
    key = name.strip()
    if key.lower() in UTC_NAMES:
        return dt.UTC
    iana = _lower_windows().get(key.lower())
    try:
        return ZoneInfo(iana or key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise unsupported(key) from exc


def unsupported(name: str) -> GraphError:
    return GraphError(
        400,
        "TimeZoneNotSupportedException",
        f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{name}'.",
    )


def to_utc(local: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """A wall-clock time in ``zone`` as UTC (``fold=0``: the first of two ambiguous instants)."""
    return local.replace(tzinfo=zone).astimezone(dt.UTC)


def to_local(instant: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """A UTC instant as a naive wall-clock time in ``zone``."""
    return instant.astimezone(zone).replace(tzinfo=None)
