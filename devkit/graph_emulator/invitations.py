"""Meeting invitations between the mailboxes the emulator holds, as Exchange delivers them.

When an organizer's event names attendees whose address is another mailbox's (UPN or mail, any case), each
of those mailboxes gets a copy in its calendar (``Calendar.receive``): the same iCalUId and meeting fields,
the organizer's ``organizer``, ``isOrganizer: false``, ``responseStatus`` notResponded, its own id and
changeKey. The organizer's later versions replace the copies' meeting fields; an attendee removed from the
meeting, or every attendee when the organizer deletes the event, gets its copy cancelled (``isCancelled``,
"Canceled: " subject) and keeps it until deleting it. Edits an attendee makes to a copy stay local.

``prepare`` runs under the organizer's mailbox lock and returns snapshots; ``deliver`` runs after that lock
is released and takes each attendee's lock in turn, so no two mailbox locks are ever held together.
``EmulatorSettings.deliver_invitations`` turns all of it off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from devkit.graph_emulator.calendar import Meeting, meeting_props
from devkit.graph_emulator.events import EventRecord

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp
    from devkit.graph_emulator.store import Mailbox


@dataclass(frozen=True)
class Delivery:
    mailbox: Mailbox
    meeting: Meeting
    create: bool  # a newly invited mailbox gets a copy; others only have an existing copy brought up to date


def organizes(mailbox: Mailbox, record: EventRecord) -> bool:
    """The mailbox organizes the event (not a copy, not an event whose organizer is someone else)."""
    if record.invitation is not None:
        return False
    organizer = record.props.get("organizer")
    if not organizer:
        return True
    address = str(organizer.get("emailAddress", {}).get("address", ""))
    return address.lower() == mailbox.owner.address.lower()


def prepare(app: GraphApp, mailbox: Mailbox, record: EventRecord, *, deleted: bool = False) -> list[Delivery]:
    """What the organizer's create, update or delete of ``record`` sends (call it under ``mailbox.lock``)."""
    if not app.settings.deliver_invitations or not organizes(mailbox, record):
        return []
    targets: dict[str, Mailbox] = {}
    if not deleted:
        for attendee in record.props.get("attendees") or []:
            found = app.store.find_address(str(attendee.get("emailAddress", {}).get("address", "")))
            if found is not None and found.user_id != mailbox.user_id:
                targets.setdefault(found.user_id, found)
    if not targets and not record.invited:
        return []
    record.meeting_seq += 1
    meeting = snapshot(mailbox, record)
    deliveries = [Delivery(m, meeting, user_id not in record.invited) for user_id, m in targets.items()]
    for user_id in sorted(record.invited - set(targets)):
        gone = app.store.find(user_id)
        if gone is not None:
            deliveries.append(Delivery(gone, replace(meeting, cancelled=True), False))
    record.invited = set(targets)
    return deliveries


def snapshot(mailbox: Mailbox, record: EventRecord) -> Meeting:
    owner = mailbox.owner
    exceptions = {
        original: (state.start, state.end, copy.deepcopy(meeting_props(state.overrides)))
        for original, state in record.exceptions.items()
    }
    return Meeting(
        link=(owner.user_id, record.key),
        seq=record.meeting_seq,
        organizer={"emailAddress": {"name": owner.display_name, "address": owner.address}},
        props=copy.deepcopy(meeting_props(record.props)),
        start=record.start,
        end=record.end,
        recurrence=record.recurrence,
        exceptions=exceptions,
        cancelled_occurrences=frozenset(record.cancelled),
        ical_key=record.ical_key or record.key,
        ical_uid=record.ical_uid,
        join_url=record.join_url,
    )


def deliver(app: GraphApp, deliveries: list[Delivery]) -> None:
    """Apply the snapshots to the attendees' calendars, one mailbox lock at a time, and notify."""
    for delivery in deliveries:
        with delivery.mailbox.lock:
            changes = delivery.mailbox.calendar.receive(delivery.meeting, create=delivery.create)
        app.publish(delivery.mailbox, changes)
