"""Mailboxes: who owns them, and their calendar, contacts, To Do lists and mail folders."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from devkit.graph_emulator.calendar import Calendar, Owner
from devkit.graph_emulator.items import CONTACTS, MESSAGES, TASKS, WELL_KNOWN_MAIL_FOLDERS, ItemStore
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.util import ChangeKeys, GraphError, Json


@dataclass
class Mailbox:
    owner: Owner
    upn: str
    calendar: Calendar
    contacts: ItemStore
    tasks: ItemStore
    messages: ItemStore
    time_zone: str = "UTC"
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def user_id(self) -> str:
        return self.owner.user_id

    def profile(self) -> Json:
        return {
            "id": self.owner.user_id,
            "displayName": self.owner.display_name,
            "mail": self.owner.address,
            "userPrincipalName": self.upn,
            "businessPhones": [],
            "givenName": self.owner.display_name.split(" ")[0],
            "surname": " ".join(self.owner.display_name.split(" ")[1:]) or None,
            "jobTitle": None,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US",
        }


class Store:
    def __init__(self, clock: Clock, settings: EmulatorSettings) -> None:
        self._clock = clock
        self._settings = settings
        self._keys = ChangeKeys()
        self._by_id: dict[str, Mailbox] = {}
        self._by_upn: dict[str, Mailbox] = {}
        self._lock = threading.Lock()

    def add(
        self,
        *,
        user_id: str | None = None,
        upn: str | None = None,
        display_name: str | None = None,
        mail: str | None = None,
        tenant_id: str | None = None,
        time_zone: str = "UTC",
    ) -> Mailbox:
        user_id = (user_id or str(uuid.uuid4())).lower()
        upn = upn or f"user-{user_id[:8]}@contoso.onmicrosoft.com"
        owner = Owner(
            user_id, display_name or upn.split("@")[0], mail or upn, tenant_id or self._settings.tenant_id
        )
        with self._lock:
            if user_id in self._by_id or upn.lower() in self._by_upn:
                raise GraphError(409, "ErrorMailboxExists", f"A mailbox for '{upn}' already exists.")
            mailbox = Mailbox(
                owner,
                upn,
                Calendar(owner, self._clock, self._keys, self._settings),
                ItemStore(CONTACTS, self._clock, self._keys),
                ItemStore(TASKS, self._clock, self._keys),
                ItemStore(MESSAGES, self._clock, self._keys),
                time_zone,
            )
            mailbox.contacts.add_container({"displayName": "Contacts"}, well_known="contacts")
            mailbox.tasks.add_container({"displayName": "Tasks"}, well_known="defaultList")
            for well_known, name in WELL_KNOWN_MAIL_FOLDERS:
                mailbox.messages.add_container({"displayName": name}, well_known=well_known)
            self._by_id[user_id] = mailbox
            self._by_upn[upn.lower()] = mailbox
        return mailbox

    def find(self, id_or_upn: str) -> Mailbox | None:
        key = id_or_upn.lower()
        with self._lock:
            return self._by_id.get(key) or self._by_upn.get(key)

    def find_address(self, address: str) -> Mailbox | None:
        """The mailbox an email address reaches: its UPN or its mail, in any case."""
        key = address.strip().lower()
        if not key:
            return None
        with self._lock:
            found = self._by_upn.get(key)
            if found is None:
                found = next((m for m in self._by_id.values() if m.owner.address.lower() == key), None)
            return found

    def get(self, id_or_upn: str) -> Mailbox:
        mailbox = self.find(id_or_upn)
        if mailbox is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{id_or_upn}' is invalid.")
        return mailbox

    def all(self) -> list[Mailbox]:
        with self._lock:
            return list(self._by_id.values())
