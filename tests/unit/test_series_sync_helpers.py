"""The pure helpers of ``services.series_sync``: which delta items belong to a series, which links hold one,
and whether Outlook retimed a linked series."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sync_core.domain.changes import GraphDeletion, GraphUpsert
from sync_core.domain.model import Timed
from sync_core.services.series_sync import is_series_link, outlook_retimed, series_master_of
from tests.unit.test_planning import activity, graph_event, linked
from tests.unit.test_planning_series import FIRST, MASTER, linked_series, outlook_series, weekly


def test_every_item_of_a_series_names_its_master_and_single_events_none() -> None:
    occurrence = graph_event("AAMk-o", activity(), type="occurrence", seriesMasterId=MASTER)
    exception = graph_event("AAMk-x", activity(), type="exception", seriesMasterId=MASTER)
    master = graph_event(MASTER, weekly(), type="seriesMaster")
    single = graph_event("AAMk-1", activity())
    assert [series_master_of(GraphUpsert(event)) for event in (occurrence, exception, master)] == [MASTER] * 3
    assert series_master_of(GraphUpsert(single)) is None
    assert series_master_of(GraphDeletion(MASTER)) is None


def test_a_series_link_is_told_by_its_base() -> None:
    assert is_series_link(linked_series(weekly()))
    assert not is_series_link(linked("act-1", "AAMk-1", activity()))


def test_outlook_retimed_only_when_the_pattern_or_the_times_moved() -> None:
    series = weekly()
    link = linked_series(series)
    same = outlook_series(series).series
    assert same is not None
    assert not outlook_retimed(link, same.activity)
    renamed = outlook_series(dataclasses.replace(series, subject="Renamed")).series
    assert renamed is not None
    assert not outlook_retimed(link, renamed.activity)
    later = FIRST + timedelta(hours=2)
    moved = outlook_series(
        dataclasses.replace(series, when=Timed(later, later + timedelta(hours=1), "Europe/Berlin"))
    )
    assert moved.series is not None
    assert outlook_retimed(link, moved.series.activity)
