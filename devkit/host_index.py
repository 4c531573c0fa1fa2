"""Indexing: what the host learns from a function app before it runs anything.

The app file is imported by path as the module ``function_app``; its one ``FunctionApp`` gives its functions
through ``app.get_functions()`` (which may be called only once per app). Each function is read from its
function.json-shaped bindings (``Function.get_raw_bindings()``, the form the real host receives from the
worker), with ``%SETTING%`` references resolved from the app settings. A function the devkit host cannot run
(an unsupported trigger or binding, a bad route or schedule, parameters that do not match its bindings) is
left out and reported, and the rest still run.
"""

from __future__ import annotations

import enum
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

from devkit.host_config import (
    HostConfig,
    HostConfigError,
    check_queue_name,
    resolve_references,
    storage_connection_string,
)
from devkit.host_routes import RouteTemplate, parse_route
from devkit.ncrontab import NcrontabError, NcrontabSchedule
from devkit.ncrontab import parse as parse_schedule

logger = logging.getLogger("devkit.host")


class AuthLevel(enum.Enum):
    ANONYMOUS = "anonymous"
    FUNCTION = "function"
    ADMIN = "admin"


@dataclass(frozen=True)
class HttpTrigger:
    route: RouteTemplate
    methods: tuple[str, ...] | None  # None: every method
    auth_level: AuthLevel


@dataclass(frozen=True)
class QueueTrigger:
    queue_name: str
    connection_string: str = field(repr=False)


@dataclass(frozen=True)
class TimerTrigger:
    schedule: NcrontabSchedule
    run_on_startup: bool


@dataclass(frozen=True)
class QueueOutput:
    name: str  # the parameter holding a func.Out, or "$return"
    queue_name: str
    connection_string: str = field(repr=False)


Trigger = HttpTrigger | QueueTrigger | TimerTrigger


@dataclass(frozen=True)
class IndexedFunction:
    name: str
    trigger_param: str
    trigger: Trigger
    outputs: tuple[QueueOutput, ...]
    user_function: Callable[..., Any] = field(repr=False)
    is_async: bool
    wants_context: bool
    directory: str

    @property
    def trigger_type(self) -> str:
        return {HttpTrigger: "httpTrigger", QueueTrigger: "queueTrigger", TimerTrigger: "timerTrigger"}[
            type(self.trigger)
        ]


@dataclass(frozen=True)
class AppIndex:
    functions: tuple[IndexedFunction, ...]
    errors: Mapping[str, str]  # function name → why it was not loaded


class AppLoadError(RuntimeError):
    """The app file could not be imported or holds no single FunctionApp."""


def load_function_app(path: Path) -> func.FunctionRegister:
    """Import ``path`` as the module ``function_app``, its directory first on sys.path (as the worker)."""
    app_dir = str(path.parent)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    spec = importlib.util.spec_from_file_location("function_app", path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        logger.exception("Importing %s failed", path)
        raise AppLoadError(f"importing {path} failed: {type(error).__name__}: {error}") from error
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise AppLoadError(
            f"{path} must define exactly one FunctionApp instance at module level (found {len(apps)})"
        )
    app: func.FunctionRegister = apps[0]
    return app


def index_functions(
    app: func.FunctionRegister, settings: Mapping[str, str], config: HostConfig, directory: str
) -> AppIndex:
    """Index every function of ``app``. Calls ``app.get_functions()``, which may run only once per app."""
    functions: list[IndexedFunction] = []
    errors: dict[str, str] = {}
    allowed = {name.lower() for name in config.functions} if config.functions is not None else None
    for function in app.get_functions():
        name = function.get_function_name() or function.get_user_function().__name__
        if allowed is not None and name.lower() not in allowed:
            logger.info("Function %s is not in host.json 'functions'; not loaded", name)
            continue
        if settings.get(f"AzureWebJobs.{name}.Disabled", "").lower() in {"1", "true"}:
            logger.info("Function %s is disabled by AzureWebJobs.%s.Disabled", name, name)
            continue
        try:
            functions.append(_index_function(function, name, settings, directory))
        except (ValueError, KeyError) as error:  # HostConfigError, RouteError, NcrontabError are ValueErrors
            logger.error("Function %s is not loaded: %s", name, error)
            errors[name] = str(error)
    return AppIndex(tuple(functions), errors)


def _index_function(
    function: func.Function, name: str, settings: Mapping[str, str], directory: str
) -> IndexedFunction:
    bindings: list[dict[str, Any]] = [json.loads(raw) for raw in function.get_raw_bindings()]
    trigger_binding = function.get_trigger()
    if trigger_binding is None:
        raise HostConfigError("it has no trigger")
    raw_trigger = next(b for b in bindings if b["name"] == trigger_binding.name and b["direction"] == "IN")
    what = f"function {name}"
    trigger: Trigger
    if raw_trigger["type"] == "httpTrigger":
        methods = raw_trigger.get("methods")
        trigger = HttpTrigger(
            route=parse_route(resolve_references(raw_trigger.get("route") or name, settings, what=what)),
            methods=tuple(str(method).upper() for method in methods) if methods else None,
            auth_level=AuthLevel(str(raw_trigger.get("authLevel") or "function").lower()),
        )
    elif raw_trigger["type"] == "queueTrigger":
        queue_name = resolve_references(str(raw_trigger["queueName"]), settings, what=what)
        trigger = QueueTrigger(
            queue_name=check_queue_name(queue_name, what=what),
            connection_string=storage_connection_string(raw_trigger.get("connection"), settings, what=what),
        )
    elif raw_trigger["type"] == "timerTrigger":
        schedule_text = resolve_references(str(raw_trigger["schedule"]), settings, what=what)
        try:
            schedule = parse_schedule(schedule_text)
        except NcrontabError as error:
            raise NcrontabError(f"timer schedule: {error}") from None
        trigger = TimerTrigger(schedule=schedule, run_on_startup=bool(raw_trigger.get("runOnStartup")))
    else:
        raise HostConfigError(f"the devkit host does not run {raw_trigger['type']} functions")

    outputs: list[QueueOutput] = []
    for binding in bindings:
        if binding is raw_trigger:
            continue
        kind, direction = binding["type"], binding["direction"]
        if (
            kind == "http"
            and direction == "OUT"
            and isinstance(trigger, HttpTrigger)
            and binding["name"] == "$return"
        ):
            continue
        if kind == "queue" and direction == "OUT":
            queue_name = resolve_references(str(binding["queueName"]), settings, what=what)
            outputs.append(
                QueueOutput(
                    name=binding["name"],
                    queue_name=check_queue_name(queue_name, what=what),
                    connection_string=storage_connection_string(
                        binding.get("connection"), settings, what=what
                    ),
                )
            )
            continue
        raise HostConfigError(
            f"the devkit host does not support {direction.lower()} bindings of type {kind!r}"
        )

    user_function = function.get_user_function()
    parameters = set(inspect.signature(user_function).parameters)
    bound = {trigger_binding.name} | {output.name for output in outputs if output.name != "$return"}
    missing = bound - parameters
    unknown = parameters - bound - {"context"}
    if missing or unknown:
        raise HostConfigError(
            "its parameters do not match its bindings"
            + (f"; no parameter for {sorted(missing)}" if missing else "")
            + (f"; no binding for {sorted(unknown)}" if unknown else "")
        )
    return IndexedFunction(
        name=name,
        trigger_param=trigger_binding.name,
        trigger=trigger,
        outputs=tuple(outputs),
        user_function=user_function,
        is_async=inspect.iscoroutinefunction(user_function),
        wants_context="context" in parameters,
        directory=directory,
    )
