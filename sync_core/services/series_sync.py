"""Series on the Outlook side of a sync run: gathering a series whole, and writing its occurrences.

Graph's ``calendarView/delta`` lists a series as its occurrences and exceptions (each with
``seriesMasterId``), never as its master, and a cancelled occurrence or a deleted series only as
``@removed`` ids of instances no link knows. The reconciler therefore hands every series change to
``SeriesSync``:

- ``gather``: the delta items of one page that belong to a series become one ``GraphUpsert`` of the master
  with ``series`` (``GET`` the master + its ``/instances`` over the sync window, a page of up to
  ``max_occurrences_per_series``: two requests for a series of any ordinary size, whichever and however
  many of its occurrences the delta named), for ``planning`` to merge as one item. Removals of ids no link
  knows may be a deleted series: the user's series links not gathered in the page are confirmed with a GET
  of their master (404 → ``GraphDeletion``).
- ``write_instances``: after the master is created or PATCHed, the instances in the window are brought to
  the activity's overrides and cancellations (``series_to_graph.plan_instance_operations``): one request per
  occurrence that differs, none for the others, so a series with attendees mails them once for the series
  and once per changed occurrence, never once per occurrence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sync_core.config import SyncPolicy
from sync_core.domain.actions import GraphWriteOptions
from sync_core.domain.changes import GraphChange, GraphDeletion, GraphUpsert
from sync_core.domain.graph_payloads import EventType, GraphEvent
from sync_core.domain.hashing import Base, field_hash, value_hash
from sync_core.domain.model import SERIES_FIELDS, Activity, Field, Side
from sync_core.domain.recurrence import Window
from sync_core.domain.series import INSTANCE_MARGIN, sync_window
from sync_core.domain.series_from_graph import series_from_graph
from sync_core.domain.series_to_graph import DeleteInstance, plan_instance_operations
from sync_core.domain.state import Link
from sync_core.errors import InvalidRequestError, ItemGoneError

log = logging.getLogger(__name__)

Token = Callable[[], str]
# Graph's largest page of a collection: the instances of a series are read in pages of at most this many.
_MAX_PAGE = 1000
_SERIES_TYPES = frozenset({EventType.SERIES_MASTER, EventType.OCCURRENCE, EventType.EXCEPTION})


class SeriesGraph(Protocol):
    def get_event(self, token: Token, event_id: str) -> GraphEvent: ...

    def list_instances(
        self, token: Token, master_id: str, start: datetime, end: datetime, *, top: int, limit: int
    ) -> tuple[list[GraphEvent], bool, bool]: ...

    def update_event(self, token: Token, event_id: str, body: Mapping[str, object]) -> GraphEvent: ...

    def delete_event(self, token: Token, event_id: str) -> bool: ...


def series_master_of(change: GraphChange) -> str | None:
    """The series master id a delta item belongs to (None: a single event, or a removal)."""
    if not isinstance(change, GraphUpsert) or change.event.type not in _SERIES_TYPES:
        return None
    if change.event.type is EventType.SERIES_MASTER:
        return change.event.id
    return change.event.series_master_id


def is_series_link(link: Link) -> bool:
    """Whether a link holds a series (its base has a recurrence)."""
    recurrence = link.base_hashes.get(f"{Side.M365.value}.{Field.RECURRENCE.value}")
    return recurrence is not None and recurrence != value_hash(None)


def outlook_retimed(link: Link, series: Activity) -> bool:
    """Whether Outlook changed a linked series' pattern or times since the last sync."""
    return _changed(link, series, (Field.RECURRENCE, Field.START_END))


def outlook_changed_series(link: Link, series: Activity) -> bool:
    """Whether Outlook changed a linked series' pattern, times, overrides or cancellations since the last
    sync: then the planner needs the CRM's series (its exceptions outside the window Outlook was read in,
    and, for a retime, all of them)."""
    return _changed(link, series, (Field.RECURRENCE, Field.START_END, *SERIES_FIELDS[1:]))


def _changed(link: Link, series: Activity, fields: Iterable[Field]) -> bool:
    base = Base.from_link(link)
    return any(base.hash_of(Side.M365, field_) not in (None, field_hash(field_, series)) for field_ in fields)


@dataclass(frozen=True)
class InstanceWrites:
    """What ``write_instances`` did: requests sent, and overrides Outlook could not take (the occurrence
    is not listed: cancelled in Outlook, or beyond the window)."""

    writes: int
    missing: int


class SeriesSync:
    def __init__(self, graph: SeriesGraph, policy: SyncPolicy) -> None:
        self._graph = graph
        self._policy = policy

    def _window(self, now: datetime) -> Window:
        return sync_window(now, self._policy.window_past_days, self._policy.window_future_days)

    # --- Outlook → plan ------------------------------------------------------------------------------------

    def gather(
        self,
        token: Token,
        changes: Sequence[GraphChange],
        *,
        now: datetime,
        unlinked_removals: bool,
        series_links: Callable[[], Iterable[Link]],
        already_read: set[str],
    ) -> list[GraphChange]:
        """The page's changes with each series' items replaced by one change of the series (in the place
        of its first item). ``unlinked_removals``: the page removed ids no link knows (a deleted series
        shows only as those); ``series_links``: the user's links, read only then; ``already_read``: the
        series this round read on earlier pages (a long series' occurrences span pages: read once), updated.
        """
        gathered: list[GraphChange] = []
        seen = already_read
        for change in changes:
            master_id = series_master_of(change)
            if master_id is None:
                gathered.append(change)
                continue
            if master_id in seen:
                continue
            seen.add(master_id)
            series = self.read(token, master_id, now=now)
            if series is not None:
                gathered.append(series)
        if unlinked_removals:
            for link in series_links():
                if link.graph_id in seen or not is_series_link(link):
                    continue
                seen.add(link.graph_id)
                try:
                    self._graph.get_event(token, link.graph_id)
                except ItemGoneError:
                    gathered.append(GraphDeletion(link.graph_id))
        return gathered

    def read(self, token: Token, master_id: str, *, now: datetime) -> GraphChange | None:
        """Series ``master_id`` as one change: the master with its instances over the sync window; a
        ``GraphDeletion`` when the master is gone; None when it cannot be read (logged, left alone)."""
        try:
            master = self._graph.get_event(token, master_id)
        except ItemGoneError:
            return GraphDeletion(master_id)
        if master.type is not EventType.SERIES_MASTER:
            return GraphUpsert(master)  # case: no longer a series (made a single event): an ordinary change
        window = self._window(now)
        limit = self._policy.max_occurrences_per_series
        instances, complete, cut = self._graph.list_instances(
            token, master_id, window.start, window.end, top=min(limit, _MAX_PAGE), limit=limit
        )
        starts = [instance.start for instance in instances if instance.start is not None]
        if cut and starts:
            # case: more instances than the cap: judge only up to the last one read (absence past it says
            # nothing), and the planner compares the CRM's side over the same span.
            window = Window(window.start, max(window.start, max(starts)))
        try:
            series = series_from_graph(
                master,
                instances,
                window=window,
                max_occurrences=limit,
                margin=INSTANCE_MARGIN,
                complete=complete,
            )
        except InvalidRequestError:
            log.warning("series: master %s is not a readable series; left alone", master_id)
            return None
        if series.truncated:
            log.info(
                "series: %s has more than %d occurrences in the window; the rest not judged", master_id, limit
            )
        return GraphUpsert(master, series=series)

    # --- plan → Outlook ------------------------------------------------------------------------------------

    def write_instances(
        self,
        token: Token,
        master_id: str,
        activity: Activity,
        options: GraphWriteOptions,
        *,
        created: bool,
    ) -> InstanceWrites:
        """Bring the instances of series ``master_id`` in the window to ``activity``'s overrides and
        cancellations (``created``: the master was just created by us)."""
        if not activity.occurrence_overrides and not activity.cancelled_occurrences and created:
            return InstanceWrites(0, 0)  # case: a new series without exceptions: the create was all
        window = self._window(options.now)
        limit = self._policy.max_occurrences_per_series
        instances, _complete, _cut = self._graph.list_instances(
            token, master_id, window.start, window.end, top=min(limit, _MAX_PAGE), limit=limit
        )
        plan = plan_instance_operations(
            activity,
            instances,
            window=window,
            now=options.now,
            description_policy=options.description_policy,
            invite_crm_contacts=options.invite_crm_contacts,
            max_occurrences=limit,
            default_time_zone=options.default_time_zone,
            series_created=created,
        )
        writes = 0
        for operation in plan.operations:
            if isinstance(operation, DeleteInstance):
                self._graph.delete_event(token, operation.instance_id)  # a 404 is done
            else:
                self._graph.update_event(token, operation.instance_id, operation.body_json())
            writes += 1
        if plan.missing:
            log.info(
                "series: %s: %d override(s) for occurrences Outlook does not list",
                master_id,
                len(plan.missing),
            )
        return InstanceWrites(writes, len(plan.missing))
