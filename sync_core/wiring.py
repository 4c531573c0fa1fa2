"""Builds the real adapters once per worker process, lazily, on the first invocation that needs them.

Nothing here runs at import time except reading settings (``check_settings``), so a misconfigured app fails
at start naming the setting, while storage, Graph and the CRM are first touched by the first invocation. The
container is process-wide and thread-safe: the Functions worker runs invocations on a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cached_property

import requests

from sync_core.adapters.crm import CrmClient
from sync_core.adapters.graph import GraphClient
from sync_core.adapters.identity import IdentityClient, TimeoutSession, UserTokens
from sync_core.adapters.queues import StorageQueues
from sync_core.adapters.tables import TableStorage
from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import Settings
from sync_core.domain.retry_policy import RetryPolicy
from sync_core.services.activity_push import ActivityPushes
from sync_core.services.connect import ConnectService
from sync_core.services.notifications import NotificationService
from sync_core.services.poison import PoisonRecorder
from sync_core.services.reconcile import Reconciler
from sync_core.services.renewal import SubscriptionRenewal
from sync_core.services.subscriptions import GraphSubscriptions
from sync_core.services.sweep import Sweep
from sync_core.services.sync_run import SyncRunner

_HEALTH_PROBE_USER = "__health_probe__"
# Threads the webhook uses to handle the users of one burst at once (storage round trips, not CPU).
_WEBHOOK_FAN_OUT = 8


class Container:
    """The adapters of one worker. Built by ``container()``; tests build their own with explicit settings
    (and, where time must follow an emulator's clock, their own ``clock``)."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or _utc_now
        self._ready_lock = threading.Lock()
        self._tables_ready = False
        self._queues_ready: set[str] = set()
        self._sessions: dict[str, requests.Session] = {}

    @cached_property
    def tables(self) -> TableStorage:
        return TableStorage(self.settings.storage)

    @cached_property
    def queues(self) -> StorageQueues:
        return StorageQueues(self.settings.storage)

    def ready_tables(self) -> TableStorage:
        """The table stores, with every table created on first use in this worker."""
        with self._ready_lock:
            if not self._tables_ready:
                self.tables.ensure_tables()
                self._tables_ready = True
        return self.tables

    def ready_queues(self) -> StorageQueues:
        """The queue client, with the sync queue created on first use in this worker."""
        with self._ready_lock:
            name = self.settings.sync_queue_name
            if name not in self._queues_ready:
                self.queues.ensure_queue(name)
                self._queues_ready.add(name)
        return self.queues

    @cached_property
    def cipher(self) -> TokenCipher:
        return TokenCipher(self.settings.token_encryption_keys)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(retry_after_cap=self.settings.retry_after_cap_seconds)

    @cached_property
    def identity(self) -> IdentityClient:
        return IdentityClient(self.settings, self._session("identity"))

    @cached_property
    def user_tokens(self) -> UserTokens:
        return UserTokens(self.identity, self.ready_tables().tokens, self.cipher)

    @cached_property
    def graph(self) -> GraphClient:
        return GraphClient(self.settings.graph_base_url, self._session("graph"), self.retry_policy)

    @cached_property
    def crm(self) -> CrmClient:
        settings = self.settings
        return CrmClient(
            settings.crm_base_url,
            settings.crm_api_key,
            settings.crm_signing_secret,
            self._session("crm"),
            self.retry_policy,
        )

    @cached_property
    def subscriptions(self) -> GraphSubscriptions:
        tables = self.ready_tables()
        return GraphSubscriptions(
            self.graph,
            self.user_tokens,
            tables.subscriptions,
            tables.connections,
            public_base_url=self.settings.public_base_url,
            max_lifetime_minutes=self.settings.subscription_max_lifetime_minutes,
            clock=self.clock,
        )

    @cached_property
    def connect_service(self) -> ConnectService:
        return ConnectService(
            settings=self.settings,
            tables=self.ready_tables(),
            identity=self.identity,
            tokens=self.user_tokens,
            cipher=self.cipher,
            subscriptions=self.subscriptions,
            events=self.crm,
            queue=_LazyQueue(self),
            clock=self.clock,
        )

    @cached_property
    def notifications(self) -> NotificationService:
        tables = self.ready_tables()
        return NotificationService(
            subscriptions=tables.subscriptions,
            connections=tables.connections,
            queue=_LazyQueue(self),
            queue_name=self.settings.sync_queue_name,
            clock=self.clock,
            pool=self._fan_out,
        )

    @cached_property
    def activity_pushes(self) -> ActivityPushes:
        tables = self.ready_tables()
        return ActivityPushes(
            connections=tables.connections,
            outbox=tables.outbox,
            queue=_LazyQueue(self),
            queue_name=self.settings.sync_queue_name,
            clock=self.clock,
            links=tables.links,
        )

    @cached_property
    def sync_runner(self) -> SyncRunner:
        return SyncRunner(subscriptions=self.subscriptions, reconciler=self.reconciler)

    @cached_property
    def reconciler(self) -> Reconciler:
        return Reconciler(
            storage=self.ready_tables(),
            graph=self.graph,
            crm=self.crm,
            tokens=self.user_tokens,
            access=self.connect_service,
            queue=_LazyQueue(self),
            queue_name=self.settings.sync_queue_name,
            policy=self.settings.sync,
            lease_seconds=self.settings.lease_seconds,
            clock=self.clock,
        )

    @cached_property
    def renewal(self) -> SubscriptionRenewal:
        tables = self.ready_tables()
        return SubscriptionRenewal(
            connections=tables.connections,
            store=tables.subscriptions,
            subscriptions=self.subscriptions,
            access=self.connect_service,
            clock=self.clock,
        )

    @cached_property
    def sweep(self) -> Sweep:
        tables = self.ready_tables()
        return Sweep(
            connections=tables.connections,
            outbox=tables.outbox,
            oauth_states=tables.oauth_states,
            nonces=tables.nonces,
            queue=_LazyQueue(self),
            queue_name=self.settings.sync_queue_name,
            age=timedelta(minutes=self.settings.sweep_age_minutes),
            clock=self.clock,
        )

    @cached_property
    def poison(self) -> PoisonRecorder:
        return PoisonRecorder(connections=self.ready_tables().connections, events=self.crm, clock=self.clock)

    @cached_property
    def _fan_out(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(_WEBHOOK_FAN_OUT, thread_name_prefix="webhook")

    def _session(self, name: str) -> requests.Session:
        with self._ready_lock:
            session = self._sessions.get(name)
            if session is None:
                session = self._sessions[name] = TimeoutSession()
            return session

    def health_probes(self) -> dict[str, Callable[[], None]]:
        def storage() -> None:
            # A point read of a row that never exists: one cheap round trip that proves storage answers.
            self.ready_tables().connections.get(_HEALTH_PROBE_USER)

        return {"storage": storage}

    def close(self) -> None:
        if "_fan_out" in self.__dict__:
            self._fan_out.shutdown(wait=True)
        if "reconciler" in self.__dict__:
            self.reconciler.close()
        for session in self._sessions.values():
            session.close()
        if "tables" in self.__dict__:
            self.tables.close()
        if "queues" in self.__dict__:
            self.queues.close()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _LazyQueue:
    """The queue client, creating the sync queue only when the first message is sent."""

    def __init__(self, container: Container) -> None:
        self._container = container

    def send(self, name: str, payload: Mapping[str, object], visibility_timeout: int | None = None) -> str:
        return self._container.ready_queues().send(name, payload, visibility_timeout)


_lock = threading.Lock()
_container: Container | None = None


def check_settings() -> Settings:
    """Parse the settings now; raises ``SettingsError`` naming every missing or malformed setting."""
    return Settings.from_process_env()


def container() -> Container:
    global _container
    with _lock:
        if _container is None:
            _container = Container(Settings.from_process_env())
        return _container
