"""Invocation: calling a user function the way the Python worker does.

Sync functions run on the caller's thread (an HTTP request thread, a queue listener's pool, a timer thread);
async ones run on a single event loop thread, as in the worker. Parameters are filled by binding name: the
trigger, a ``func.Out`` per queue output binding, and ``context`` when the function asks for it. Each
invocation is logged as one line in the real host's format; a failure also logs its traceback (to the host's
log only, never to a caller).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc

from devkit.host_index import IndexedFunction
from devkit.host_queues import InFlight, QueueSender

logger = logging.getLogger("devkit.host")


class _Out(func.Out[Any]):
    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext(func_abc.TraceContext):
    def __init__(self) -> None:
        self._trace_parent = f"00-{uuid.uuid4().hex}-{secrets.token_hex(8)}-01"

    @property
    def trace_parent(self) -> str:
        return self._trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func_abc.RetryContext):
    """No retry policies in the devkit host: every invocation is the first try."""

    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class _Context(func.Context):
    def __init__(self, invocation_id: str, function: IndexedFunction) -> None:
        self._invocation_id = invocation_id
        self._function = function
        self._local = threading.local()
        self._trace = _TraceContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def function_name(self) -> str:
        return self._function.name

    @property
    def function_directory(self) -> str:
        return self._function.directory

    @property
    def trace_context(self) -> func_abc.TraceContext:
        return self._trace

    @property
    def retry_context(self) -> func_abc.RetryContext:
        return _RetryContext()

    @property
    def thread_local_storage(self) -> Any:
        return self._local


class Invoker:
    """Calls user functions: sync ones on the caller's thread, async ones on one event loop thread (as the
    Python worker does); sends queue outputs; logs one line per invocation."""

    def __init__(self, sender: QueueSender, function_timeout: float | None) -> None:
        self._sender = sender
        self._function_timeout = function_timeout
        self.in_flight = InFlight()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()

    def invoke(
        self, function: IndexedFunction, trigger_value: object, invocation_id: str | None = None
    ) -> Any:
        """Run the function and return its return value; log and re-raise what it raises."""
        invocation_id = invocation_id or str(uuid.uuid4())
        started = time.perf_counter()
        outcome = "Failed"
        self.in_flight.enter()
        try:
            outs = {output.name: _Out() for output in function.outputs if output.name != "$return"}
            kwargs: dict[str, Any] = {function.trigger_param: trigger_value, **outs}
            if function.wants_context:
                kwargs["context"] = _Context(invocation_id, function)
            result = self._call(function, kwargs)
            for output in function.outputs:
                value = result if output.name == "$return" else outs[output.name].get()
                if value is not None:
                    self._sender.send(
                        output.connection_string, output.queue_name, _queue_bodies(value, output.name)
                    )
            outcome = "Succeeded"
            return result
        except Exception:
            logger.exception("Function '%s' failed (Id=%s)", function.name, invocation_id)
            raise
        finally:
            elapsed = time.perf_counter() - started
            logger.info(
                "Executed 'Functions.%s' (%s, Id=%s, Duration=%dms) trigger=%s",
                function.name,
                outcome,
                invocation_id,
                round(elapsed * 1000),
                function.trigger_type,
            )
            if self._function_timeout is not None and elapsed > self._function_timeout:
                logger.warning(
                    "Function '%s' ran %.0fs, over functionTimeout (%.0fs): the real host would stop it",
                    function.name,
                    elapsed,
                    self._function_timeout,
                )
            self.in_flight.leave()

    def close(self) -> None:
        with self._loop_lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()

    def _call(self, function: IndexedFunction, kwargs: dict[str, Any]) -> Any:
        if not function.is_async:
            return function.user_function(**kwargs)
        future = asyncio.run_coroutine_threadsafe(function.user_function(**kwargs), self._event_loop())
        return future.result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="async-functions", daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop


def _queue_bodies(value: object, name: str) -> list[bytes]:
    if isinstance(value, str):
        return [value.encode("utf-8")]
    if isinstance(value, bytes | bytearray):
        return [bytes(value)]
    if isinstance(value, func_abc.QueueMessage):
        body = value.get_body()
        return [body.encode("utf-8") if isinstance(body, str) else body]
    if isinstance(value, list | tuple):
        return [body for item in value for body in _queue_bodies(item, name)]
    raise TypeError(
        f"queue output {name!r} takes str, bytes, QueueMessage or a list of them, not {type(value).__name__}"
    )
