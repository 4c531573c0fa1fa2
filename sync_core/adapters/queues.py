"""Storage queues (azure-storage-queue): JSON messages, base64-encoded as the Functions queue trigger wants.

The Azure Functions queue trigger expects message text to be base64 (``TextBase64EncodePolicy``); a message
sent as plain text is moved to the poison queue by the host. So every message goes through the base64 policy.

Queue names are used as given: ``SYNC_QUEUE_NAME`` is the full name of the sync queue, the same name the
``reconcile`` trigger listens on (``%SYNC_QUEUE_NAME%``), and the platform's poison queue is
``{name}-poison``. ``TABLE_NAME_PREFIX`` applies to tables only; tests isolate queues by choosing a unique
``SYNC_QUEUE_NAME``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Mapping

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from sync_core.adapters.tables import STORAGE_USES_ENV_SETTINGS, storage_credential, translated_errors
from sync_core.config import StorageSettings
from sync_core.errors import SettingsError, StoreError

log = logging.getLogger(__name__)

# A queue message is at most 64 KiB once encoded; base64 makes 3 bytes into 4.
MAX_MESSAGE_BYTES = 64 * 1024
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$")


def queue_name(name: str) -> str:
    """``name`` itself, checked: 3-63 lowercase letters, digits and single hyphens (see the module doc)."""
    if not _QUEUE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a valid queue name (3-63 lowercase letters, digits, single hyphens)"
        )
    return name


def poison_queue_name(name: str) -> str:
    """The queue the Functions host moves a message of ``name`` to after ``maxDequeueCount`` failures."""
    return queue_name(f"{name}-poison")


class StorageQueues:
    """Sends JSON messages to the service's queues. The client is built on first use: no I/O until then."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._service: QueueServiceClient | None = None
        self._queues: dict[str, QueueClient] = {}

    def queue_name(self, name: str) -> str:
        return queue_name(name)

    def ensure_queue(self, name: str) -> None:
        """Create the queue if it does not exist yet (idempotent)."""
        full = self.queue_name(name)
        # A queue that exists already is fine (Azure answers 409 when its metadata differs).
        with translated_errors(f"create queue {full}"), contextlib.suppress(ResourceExistsError):
            self._queue(name).create_queue()

    def send(self, name: str, payload: Mapping[str, object], visibility_timeout: int | None = None) -> str:
        """Enqueue ``payload`` as JSON; it becomes visible after ``visibility_timeout`` seconds (default now).

        Returns the message id. A payload over the queue's 64 KiB limit is refused with ``StoreError``: queue
        messages carry ids, never bodies.
        """
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        encoded_size = (len(text.encode("utf-8")) + 2) // 3 * 4
        full = self.queue_name(name)
        if encoded_size > MAX_MESSAGE_BYTES:
            raise StoreError(f"queue {full}: a message of {encoded_size} bytes is over the 64 KiB limit")
        with translated_errors(f"send to queue {full}"):
            message = self._queue(name).send_message(text, visibility_timeout=visibility_timeout)
        log.debug("queues: sent message %s to %s", message.id, full)
        return str(message.id)

    def close(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
            service, self._service = self._service, None
        for queue in queues:
            queue.close()
        if service is not None:
            service.close()

    def _queue(self, name: str) -> QueueClient:
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                if self._service is None:
                    self._service = self._build_client()
                queue = self._service.get_queue_client(
                    self.queue_name(name),
                    message_encode_policy=TextBase64EncodePolicy(),
                    message_decode_policy=TextBase64DecodePolicy(),
                )
                self._queues[name] = queue
            return queue

    def _build_client(self) -> QueueServiceClient:
        settings = self._settings
        if settings.connection_string is not None:
            return QueueServiceClient.from_connection_string(
                settings.connection_string.value, use_env_settings=STORAGE_USES_ENV_SETTINGS
            )
        if not settings.queue_service_uri:
            raise SettingsError(
                {"AzureWebJobsStorage__queueServiceUri": "is required when AzureWebJobsStorage is not set"}
            )
        return QueueServiceClient(
            account_url=settings.queue_service_uri,
            credential=storage_credential(settings),
            use_env_settings=STORAGE_USES_ENV_SETTINGS,
        )
