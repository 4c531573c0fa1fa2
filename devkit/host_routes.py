"""HTTP trigger routes, matched the way the Functions host (ASP.NET Core routing) matches them.

Terminology:
- *template*: the ``route`` of an HTTP trigger, relative to the route prefix (``users/{crmUserId}/connect``).
- *parameter*: ``{name}``; ``{name?}`` is optional, ``{name=default}`` has a default, ``{*name}`` catches the
  rest of the path, ``{name:int}`` / ``{name:int:min(1)}`` adds constraints. A segment may mix text and
  parameters (``files/{name}.{ext}``).
- *precedence*: when several templates match a path, the most specific wins: per segment, literal text beats
  a mixed segment, which beats a constrained parameter, which beats a plain one, which beats a catch-all.

Literal text matches case-insensitively, as in ASP.NET. Parameter values are percent-decoded.
"""

from __future__ import annotations

import itertools
import math
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

_PARAMETER = re.compile(r"\{([^{}]*)\}")
_CONSTRAINT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<args>.*)\))?$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)

# Segment precedence, lower is more specific (ASP.NET's RoutePrecedence, inbound).
_LITERAL, _MIXED, _CONSTRAINED, _PLAIN, _CATCH_ALL = 1, 2, 3, 4, 5


class RouteError(ValueError):
    """A route template the host cannot use; the message says what is wrong."""


Constraint = Callable[[str], bool]


@dataclass(frozen=True)
class _Parameter:
    name: str
    group: str  # regex group name: parameter names need not be Python identifiers
    constraints: tuple[Constraint, ...]
    optional: bool
    default: str | None
    catch_all: bool


@dataclass(frozen=True)
class RouteTemplate:
    text: str
    precedence: tuple[int, ...]
    _pattern: re.Pattern[str] = field(repr=False)
    _parameters: tuple[_Parameter, ...] = field(repr=False)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(parameter.name for parameter in self._parameters)

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters if ``path`` (after the route prefix: ``/users/7/connect``) matches, else None."""
        found = self._pattern.match(path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for parameter in self._parameters:
            raw = found.group(parameter.group)
            if raw is None or raw == "":
                if parameter.default is not None:
                    values[parameter.name] = parameter.default
                elif not (parameter.optional or parameter.catch_all):
                    return None
                continue
            value = unquote(raw)
            if not all(check(value) for check in parameter.constraints):
                return None
            values[parameter.name] = value
        return values


def parse_route(text: str) -> RouteTemplate:
    """Compile a route template, or raise ``RouteError``."""
    template = text.strip()
    if template.startswith("~/"):
        template = template[2:]
    template = template.strip("/")
    segments = template.split("/") if template else []
    pattern = ""
    precedence: list[int] = []
    parameters: list[_Parameter] = []
    names: set[str] = set()
    groups = (f"p{number}" for number in itertools.count())
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if not segment:
            raise RouteError(f"route {text!r} has an empty segment")
        parts = _split_segment(text, segment, groups)
        segment_parameters = [part for part in parts if isinstance(part, _Parameter)]
        for parameter in segment_parameters:
            if parameter.name.lower() in names:
                raise RouteError(f"route {text!r} uses the parameter {parameter.name!r} twice")
            names.add(parameter.name.lower())
            parameters.append(parameter)
        only = parts[0] if len(parts) == 1 and isinstance(parts[0], _Parameter) else None
        if only is not None and only.catch_all:
            if not last:
                raise RouteError(f"route {text!r}: a catch-all parameter must be the last segment")
            pattern += f"(?:/(?P<{only.group}>.*))?"
            precedence.append(_CATCH_ALL)
        elif only is not None:
            body = f"(?P<{only.group}>[^/]+)"
            if only.optional or only.default is not None:
                if not last:
                    raise RouteError(f"route {text!r}: only the last segment may be optional")
                pattern += f"(?:/{body})?"
            else:
                pattern += "/" + body
            precedence.append(_CONSTRAINED if only.constraints else _PLAIN)
        else:
            if any(p.optional or p.catch_all or p.default is not None for p in segment_parameters):
                raise RouteError(
                    f"route {text!r}: optional and catch-all parameters need a segment of their own"
                )
            pattern += "/" + "".join(
                f"(?P<{part.group}>[^/]+)" if isinstance(part, _Parameter) else re.escape(part)
                for part in parts
            )
            precedence.append(_MIXED if segment_parameters else _LITERAL)
    compiled = re.compile("^" + pattern + "/?$", re.IGNORECASE | re.DOTALL)
    return RouteTemplate(
        text=template, precedence=tuple(precedence), _pattern=compiled, _parameters=tuple(parameters)
    )


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    target: T
    route_params: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


@dataclass(frozen=True)
class _Route(Generic[T]):
    template: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    target: T


class RouteTable(Generic[T]):
    """Templates in precedence order; ``resolve`` finds the function for a method and path."""

    def __init__(self) -> None:
        self._routes: list[_Route[T]] = []

    def add(self, template: RouteTemplate, methods: Iterable[str] | None, target: T) -> None:
        allowed = frozenset(method.upper() for method in methods) if methods else None
        self._routes.append(_Route(template, allowed, target))
        self._routes.sort(key=lambda route: (route.template.precedence, route.template.text.lower()))

    def resolve(self, method: str, path: str) -> RouteMatch[T] | MethodNotAllowed | None:
        allowed: set[str] = set()
        for route in self._routes:
            params = route.template.match(path)
            if params is None:
                continue
            if route.methods is None or method.upper() in route.methods:
                return RouteMatch(route.target, params)
            allowed.update(route.methods)
        return MethodNotAllowed(tuple(sorted(allowed))) if allowed else None


def _split_segment(text: str, segment: str, groups: Iterator[str]) -> Sequence[str | _Parameter]:
    parts: list[str | _Parameter] = []
    position = 0
    for found in _PARAMETER.finditer(segment):
        if found.start() > position:
            parts.append(segment[position : found.start()])
        parts.append(_parse_parameter(text, found.group(1), next(groups)))
        position = found.end()
    if position < len(segment):
        parts.append(segment[position:])
    for part in parts:
        if isinstance(part, str) and ("{" in part or "}" in part):
            raise RouteError(f"route {text!r} has an unbalanced brace in {segment!r}")
    for before, after in itertools.pairwise(parts):
        if isinstance(before, _Parameter) and isinstance(after, _Parameter):
            raise RouteError(f"route {text!r}: two parameters in {segment!r} need text between them")
    return parts


def _parse_parameter(text: str, spec: str, group: str) -> _Parameter:
    catch_all = spec.startswith("*")
    spec = spec.lstrip("*")
    default: str | None = None
    if "=" in spec:
        spec, default = spec.split("=", 1)
    optional = spec.endswith("?")
    spec = spec.removesuffix("?")
    name, *constraint_texts = _split_constraints(spec)
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise RouteError(f"route {text!r} has an invalid parameter name {name!r}")
    constraints = tuple(_constraint(text, constraint) for constraint in constraint_texts)
    return _Parameter(name, group, constraints, optional, default, catch_all)


def _split_constraints(spec: str) -> list[str]:
    """``id:int:range(1,5)`` → ``['id', 'int', 'range(1,5)']`` (a ``:`` inside parentheses stays)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in spec:
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current)
    return parts


def _constraint(text: str, constraint: str) -> Constraint:
    found = _CONSTRAINT.match(constraint)
    if found is None:
        raise RouteError(f"route {text!r} has an invalid constraint {constraint!r}")
    kind = found.group("name").lower()
    args_text = found.group("args")
    args = [arg.strip() for arg in args_text.split(",")] if args_text is not None else []
    simple: dict[str, Constraint] = {
        "int": lambda value: _is_integer(value, _INT32),
        "long": lambda value: _is_integer(value, _INT64),
        "bool": lambda value: value.lower() in {"true", "false"},
        "guid": _is_guid,
        "alpha": lambda value: value.isascii() and value.isalpha(),
        "decimal": _is_number,
        "double": _is_number,
        "float": _is_number,
        "datetime": _is_datetime,
        "required": lambda value: value != "",
    }
    if kind in simple and not args:
        return simple[kind]
    try:
        if kind == "regex" and args_text is not None:
            compiled = re.compile(args_text, re.IGNORECASE)
            return lambda value: compiled.search(value) is not None
        numbers = [int(arg) for arg in args]
    except (ValueError, re.error) as error:
        raise RouteError(f"route {text!r} has an invalid constraint {constraint!r}: {error}") from None
    ranged: dict[tuple[str, int], Constraint] = {
        ("minlength", 1): lambda value: len(value) >= numbers[0],
        ("maxlength", 1): lambda value: len(value) <= numbers[0],
        ("length", 1): lambda value: len(value) == numbers[0],
        ("length", 2): lambda value: numbers[0] <= len(value) <= numbers[1],
        ("min", 1): lambda value: _is_integer(value, _INT64) and int(value) >= numbers[0],
        ("max", 1): lambda value: _is_integer(value, _INT64) and int(value) <= numbers[0],
        ("range", 2): lambda value: _is_integer(value, _INT64) and numbers[0] <= int(value) <= numbers[1],
    }
    check = ranged.get((kind, len(numbers)))
    if check is None:
        raise RouteError(f"route {text!r} has an unknown constraint {constraint!r}")
    return check


def _is_integer(value: str, bounds: tuple[int, int]) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", value) is not None and bounds[0] <= int(value) <= bounds[1]


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
