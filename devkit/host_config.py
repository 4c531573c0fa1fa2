"""What the local Functions host reads before it runs anything: app settings and host.json.

App settings come from the ``Values`` of a local.settings.json-style file and from the process environment;
the environment wins, as with Core Tools. host.json is read from the app's directory, as the real host reads
it from the app root. Only what the local host acts on is parsed: the HTTP route prefix, the queue trigger
options, ``functionTimeout`` and the ``functions`` allow-list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ROUTE_PREFIX = "api"
DEFAULT_STORAGE_CONNECTION = "AzureWebJobsStorage"
# The real host's default request body limit (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT), 100 MiB.
DEFAULT_MAX_REQUEST_BYTES = 104_857_600

_TIMESPAN = re.compile(
    r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<f>\d{1,7}))?)?$"
)
_SETTING_REFERENCE = re.compile(r"%([^%\s]+)%")
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$")


class HostConfigError(ValueError):
    """A setting, host.json value or binding the host cannot use; the message names it."""


def load_settings_file(path: Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json-style file, as strings."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HostConfigError(f"cannot read settings file {path}: {error}") from error
    if not isinstance(document, dict):
        raise HostConfigError(f"settings file {path} must hold a JSON object")
    if document.get("IsEncrypted"):
        raise HostConfigError(f"settings file {path} is encrypted; the devkit host reads plain values only")
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise HostConfigError(f"settings file {path}: 'Values' must be an object")
    return {str(name): _setting_text(value) for name, value in values.items()}


def merge_settings(file_values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """App settings as the function sees them: the file's values, overridden by the environment."""
    return {**file_values, **environ}


def resolve_references(text: str, settings: Mapping[str, str], *, what: str) -> str:
    """Replace every ``%NAME%`` in a binding value with the app setting ``NAME``, as the host does."""

    def replace(found: re.Match[str]) -> str:
        name = found.group(1)
        value = settings.get(name)
        if value is None:
            raise HostConfigError(f"{what} refers to the app setting %{name}%, which is not set")
        return value

    return _SETTING_REFERENCE.sub(replace, text)


def check_queue_name(name: str, *, what: str) -> str:
    if not _QUEUE_NAME.match(name):
        raise HostConfigError(
            f"{what}: {name!r} is not a valid queue name (3-63 lowercase letters, digits and single hyphens)"
        )
    return name


def storage_connection_string(connection: str | None, settings: Mapping[str, str], *, what: str) -> str:
    """The connection string behind a binding's ``connection`` (a setting name), resolved like the host.

    An empty name means ``AzureWebJobsStorage``; a name ``X`` is looked up as ``X``, then ``AzureWebJobsX``.
    Identity-based connections (``X__queueServiceUri``) need Entra ID tokens, which Azurite does not take.
    """
    name = connection or DEFAULT_STORAGE_CONNECTION
    for candidate in (name, f"AzureWebJobs{name}"):
        value = settings.get(candidate, "").strip()
        if value:
            return value
    if settings.get(f"{name}__queueServiceUri") or settings.get(f"{name}__serviceUri"):
        raise HostConfigError(
            f"{what}: connection {name!r} is identity-based (__queueServiceUri); the devkit host needs a "
            f"connection string in the setting {name!r}"
        )
    raise HostConfigError(f"{what}: the connection setting {name!r} is not set")


def parse_timespan(text: str, *, what: str) -> float:
    """A .NET TimeSpan as host.json writes it (``[d.]hh:mm[:ss[.fffffff]]``), in seconds."""
    found = _TIMESPAN.match(text.strip())
    if found is None:
        raise HostConfigError(f"host.json {what}: {text!r} is not a TimeSpan like '00:00:30'")
    days = int(found.group("days") or 0)
    hours, minutes, seconds = int(found.group("h")), int(found.group("m")), int(found.group("s") or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise HostConfigError(f"host.json {what}: {text!r} is out of range")
    fraction = float("0." + found.group("f")) if found.group("f") else 0.0
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + fraction


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` in host.json, with the Storage extension's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    base64: bool = True

    @classmethod
    def from_json(cls, section: Mapping[str, Any]) -> QueueOptions:
        batch_size = _integer(section, "batchSize", 16, 1, 32)
        threshold = _integer(section, "newBatchThreshold", batch_size // 2, 0, 1000)
        polling = section.get("maxPollingInterval")
        max_polling = (
            60.0 if polling is None else _timespan_or_ms(polling, "extensions.queues.maxPollingInterval")
        )
        if max_polling < 0.1:
            raise HostConfigError(
                "host.json extensions.queues.maxPollingInterval must be at least 00:00:00.1"
            )
        visibility = section.get("visibilityTimeout")
        encoding = str(section.get("messageEncoding", "base64")).lower()
        if encoding not in {"base64", "none"}:
            raise HostConfigError(
                f"host.json extensions.queues.messageEncoding must be base64 or none, got {encoding!r}"
            )
        return cls(
            batch_size=batch_size,
            new_batch_threshold=threshold,
            max_polling_interval=max_polling,
            visibility_timeout=(
                0.0
                if visibility is None
                else parse_timespan(str(visibility), what="extensions.queues.visibilityTimeout")
            ),
            max_dequeue_count=_integer(section, "maxDequeueCount", 5, 1, 10_000),
            base64=encoding == "base64",
        )


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str = DEFAULT_ROUTE_PREFIX
    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout: float | None = None  # seconds; None = no limit
    functions: tuple[str, ...] | None = None  # host.json "functions": only these are loaded

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> HostConfig:
        extensions = document.get("extensions") or {}
        http = extensions.get("http") or {}
        prefix = str(http.get("routePrefix", DEFAULT_ROUTE_PREFIX)).strip("/")
        timeout_text = document.get("functionTimeout")
        timeout = (
            None
            if timeout_text in (None, "-1")
            else parse_timespan(str(timeout_text), what="functionTimeout")
        )
        functions = document.get("functions")
        if functions is not None and not (
            isinstance(functions, list) and all(isinstance(name, str) for name in functions)
        ):
            raise HostConfigError("host.json 'functions' must be a list of function names")
        return cls(
            route_prefix=prefix,
            queues=QueueOptions.from_json(extensions.get("queues") or {}),
            function_timeout=timeout,
            functions=tuple(functions) if functions is not None else None,
        )


def load_host_json(path: Path) -> HostConfig:
    """host.json at ``path``; a missing file means the defaults (the real host would refuse to start)."""
    if not path.exists():
        return HostConfig()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HostConfigError(f"cannot read {path}: {error}") from error
    if not isinstance(document, dict):
        raise HostConfigError(f"{path} must hold a JSON object")
    return HostConfig.from_json(document)


def _setting_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _integer(section: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HostConfigError(
            f"host.json extensions.queues.{name} must be a whole number from {low} to {high}"
        )
    return value


def _timespan_or_ms(value: object, what: str) -> float:
    # The Storage extension takes maxPollingInterval as a TimeSpan or, for older apps, in milliseconds.
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1000
    return parse_timespan(str(value), what=what)
