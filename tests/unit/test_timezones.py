"""Windows ⇄ IANA zones and Graph's dateTimeTimeZone values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sync_core.domain.timezones import (
    CUSTOM_ZONE,
    UnknownTimeZoneError,
    format_graph_datetime,
    iana_name,
    parse_graph_datetime,
    windows_name,
    zone,
)
from sync_core.domain.windows_zones import WINDOWS_TO_IANA

SHARED = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "windowsZones.json"


def test_generated_map_matches_the_cldr_copy() -> None:
    assert dict(WINDOWS_TO_IANA) == json.loads(SHARED.read_text())


@pytest.mark.parametrize("name", sorted(WINDOWS_TO_IANA))
def test_every_windows_zone_loads(name: str) -> None:
    zone(name)


def test_graph_wall_clock_in_a_windows_zone_across_dst() -> None:
    summer = parse_graph_datetime(
        {"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": "W. Europe Standard Time"}
    )
    winter = parse_graph_datetime(
        {"dateTime": "2026-12-01T09:00:00.0000000", "timeZone": "W. Europe Standard Time"}
    )
    assert summer.astimezone(UTC).hour == 7
    assert winter.astimezone(UTC).hour == 8


def test_round_trip_keeps_seven_fraction_digits() -> None:
    moment = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    wire = format_graph_datetime(moment, "Pacific Standard Time")
    assert wire == {"dateTime": "2026-03-28T18:30:00.0000000", "timeZone": "Pacific Standard Time"}
    assert parse_graph_datetime(wire) == moment


def test_names_both_ways() -> None:
    assert iana_name("Pacific Standard Time") == "America/Los_Angeles"
    assert iana_name("Europe/Berlin") == "Europe/Berlin"
    assert windows_name("America/Los_Angeles") == "Pacific Standard Time"
    assert iana_name(CUSTOM_ZONE) == "UTC"
    with pytest.raises(UnknownTimeZoneError):
        zone("Mars Standard Time")
