"""Queue triggers and queue output bindings on Azure Storage queues (Azurite), like the Storage extension.

Terminology:
- *lease*: a fetched message stays invisible to other readers for ``LEASE_SECONDS`` while its function runs.
- *visibility timeout* (host.json): after a failed try the message becomes visible again this much later.
- *dequeue count*: how many times the service has handed the message out; it grows by one per fetch.
- *poison queue*: ``<queue>-poison``. A message that fails on its ``maxDequeueCount``-th try is copied there
  unchanged (same encoding) and deleted from its queue, so nothing disappears silently.

One listener thread per queue trigger polls with exponential back-off (100 ms doubling up to
``maxPollingInterval``) while the queue is empty, fetches ``batchSize`` messages at a time, runs them
concurrently, and fetches the next batch once the number still running drops to ``newBatchThreshold``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import azure.functions.queue as func_queue
import requests
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import QueueClient, QueueMessage
from requests.adapters import HTTPAdapter

from devkit.host_config import QueueOptions

logger = logging.getLogger("devkit.host.queues")

LEASE_SECONDS = 600  # the Storage extension's 10-minute lease (the devkit host does not renew it)
MIN_POLLING_INTERVAL = 0.1

MessageHandler = Callable[[func_queue.QueueMessage], None]


class Disposition(enum.Enum):
    """What happens to a message whose function failed."""

    RETRY = "retry"  # visible again after visibilityTimeout
    POISON = "poison"  # copied to <queue>-poison and deleted


def after_failure(dequeue_count: int, max_dequeue_count: int) -> Disposition:
    return Disposition.POISON if dequeue_count >= max_dequeue_count else Disposition.RETRY


def poison_queue_name(queue_name: str) -> str:
    return f"{queue_name}-poison"


def decode_body(content: str, *, base64_encoded: bool) -> bytes:
    """The message body the function sees; raises ValueError for text that is not base64 when it must be."""
    if not base64_encoded:
        return content.encode("utf-8")
    try:
        return base64.b64decode(content, validate=True)
    except binascii.Error as error:
        raise ValueError(f"the message is not valid base64 ({error})") from None


def encode_body(body: bytes, *, base64_encoded: bool) -> str:
    return base64.b64encode(body).decode("ascii") if base64_encoded else body.decode("utf-8")


def trigger_message_for(
    *,
    id: str,
    body: bytes,
    dequeue_count: int,
    insertion_time: datetime | None,
    expiration_time: datetime | None = None,
    time_next_visible: datetime | None = None,
    pop_receipt: str | None = None,
) -> func_queue.QueueMessage:
    """The ``func.QueueMessage`` a queue-triggered function gets (the worker's own class, all fields set)."""
    return func_queue.QueueMessage(  # type: ignore[no-untyped-call]  # its __init__ has no annotations
        id=id,
        body=body,
        dequeue_count=dequeue_count,
        expiration_time=expiration_time,
        insertion_time=insertion_time,
        time_next_visible=time_next_visible,
        pop_receipt=pop_receipt,
    )


def queue_client(connection_string: str, queue_name: str, *, pool_size: int = 10) -> QueueClient:
    """A client that sends and returns message text as is (encoding is the host's job, not the SDK's)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return QueueClient.from_connection_string(
        connection_string, queue_name, transport=RequestsTransport(session=session, session_owner=True)
    )


def ensure_queue(client: QueueClient) -> None:
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()


class InFlight:
    """Counts work in progress so a listener can pace itself and the host can wait for it at shutdown."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def enter(self) -> None:
        with self._changed:
            self._count += 1

    def leave(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def wait_until_at_most(self, limit: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._count <= limit, timeout=timeout)


class QueueListener:
    """Polls one queue for one function."""

    def __init__(
        self,
        *,
        function_name: str,
        queue_name: str,
        connection_string: str,
        options: QueueOptions,
        handler: MessageHandler,
    ) -> None:
        self.function_name = function_name
        self.queue_name = queue_name
        self._options = options
        self._handler = handler
        self._concurrency = options.batch_size + options.new_batch_threshold
        self._client = queue_client(connection_string, queue_name, pool_size=self._concurrency + 2)
        self._poison = queue_client(connection_string, poison_queue_name(queue_name))
        self._stop = threading.Event()
        self._in_flight = InFlight()
        self._pool = ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix=f"queue-{queue_name}"
        )
        self._thread = threading.Thread(target=self._poll, name=f"poll-{queue_name}", daemon=True)
        self._storage_down = False

    def start(self) -> None:
        """Create the queue if needed (raises AzureError if storage is unreachable) and start polling."""
        ensure_queue(self._client)
        self._thread.start()

    def stop(self) -> None:
        """Stop fetching; messages already fetched keep running."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """After ``stop``: wait up to ``timeout`` seconds for fetched messages to be settled."""
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        return self._in_flight.wait_until_at_most(0, max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        self._poison.close()

    def _poll(self) -> None:
        delay = MIN_POLLING_INTERVAL
        while not self._stop.is_set():
            # Fetch the next batch only once the running count is down to newBatchThreshold.
            if not self._in_flight.wait_until_at_most(self._options.new_batch_threshold, timeout=0.5):
                continue
            messages = self._fetch()
            if not messages:
                self._stop.wait(delay)
                delay = min(delay * 2, self._options.max_polling_interval)
                continue
            delay = MIN_POLLING_INTERVAL
            for message in messages:
                self._in_flight.enter()
                self._pool.submit(self._process, message)

    def _fetch(self) -> list[QueueMessage]:
        try:
            pages = self._client.receive_messages(
                messages_per_page=self._options.batch_size, visibility_timeout=LEASE_SECONDS
            ).by_page()
            page = next(pages, None)
            messages = list(page) if page is not None else []
        except AzureError as error:
            if not self._storage_down:
                logger.warning(
                    "Queue %s: cannot fetch messages (%s); retrying", self.queue_name, type(error).__name__
                )
            self._storage_down = True
            return []
        if self._storage_down:
            logger.info("Queue %s: storage reachable again", self.queue_name)
            self._storage_down = False
        return messages

    def _process(self, message: QueueMessage) -> None:
        try:
            dequeue_count = message.dequeue_count or 1
            if dequeue_count > self._options.max_dequeue_count:
                # Fetched more often than allowed without a verdict (e.g. a host died mid-run): poison it.
                self._move_to_poison(message)
            elif self._run(message, dequeue_count):
                self._client.delete_message(message.id, message.pop_receipt)
            elif after_failure(dequeue_count, self._options.max_dequeue_count) is Disposition.POISON:
                self._move_to_poison(message)
            else:
                self._client.update_message(
                    message.id,
                    message.pop_receipt,
                    visibility_timeout=round(self._options.visibility_timeout),
                )
        except AzureError as error:
            # E.g. the lease ran out and someone else holds the message now: it will come back.
            logger.warning(
                "Queue %s: could not settle message %s (%s)",
                self.queue_name,
                message.id,
                type(error).__name__,
            )
        finally:
            self._in_flight.leave()

    def _run(self, message: QueueMessage, dequeue_count: int) -> bool:
        try:
            body = decode_body(str(message.content), base64_encoded=self._options.base64)
        except ValueError as error:
            logger.error(
                "Queue %s: message %s for %s cannot be decoded: %s",
                self.queue_name,
                message.id,
                self.function_name,
                error,
            )
            return False
        trigger_message = trigger_message_for(
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            self._handler(trigger_message)
        except Exception:  # the host has logged it; the message's fate is decided by the caller
            return False
        return True

    def _move_to_poison(self, message: QueueMessage) -> None:
        poison = poison_queue_name(self.queue_name)
        logger.warning(
            "Message %s has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            message.id,
            self._options.max_dequeue_count,
            poison,
        )
        content = str(message.content)  # copied unchanged: same encoding as the original
        try:
            self._poison.send_message(content)
        except ResourceNotFoundError:
            ensure_queue(self._poison)
            self._poison.send_message(content)
        self._client.delete_message(message.id, message.pop_receipt)


class QueueSender:
    """Queue output bindings: sends what a function set on its ``Out`` to a queue, creating it if needed."""

    def __init__(self, options: QueueOptions) -> None:
        self._base64 = options.base64
        self._clients: dict[tuple[str, str], QueueClient] = {}
        self._lock = threading.Lock()

    def send(self, connection_string: str, queue_name: str, bodies: Iterable[bytes]) -> None:
        client = self._client(connection_string, queue_name)
        for body in bodies:
            content = encode_body(body, base64_encoded=self._base64)
            try:
                client.send_message(content)
            except ResourceNotFoundError:
                ensure_queue(client)
                client.send_message(content)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def _client(self, connection_string: str, queue_name: str) -> QueueClient:
        with self._lock:
            key = (connection_string, queue_name)
            if key not in self._clients:
                self._clients[key] = queue_client(connection_string, queue_name)
            return self._clients[key]
