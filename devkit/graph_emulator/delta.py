"""Delta query: per-scope change logs, rounds, and the opaque state tokens of nextLink / deltaLink.

- A *scope* is what one delta URL tracks (a mailbox's calendar view, one contact folder, one To Do list...).
  Each has a ``ChangeLog``: an append-only list of references to what changed, numbered from 1.
- A *deltaLink* token encodes (mailbox, scope, log position, window, epoch): it is stateless and can be used
  again, which replays the same changes (Graph tolerates replays, and so must clients).
- A *round* is what one delta call sequence returns: every current member (no token) or every reference
  logged after the token's position. Its list of references is fixed when the round starts and kept
  server-side; a *skipToken* names the round and an offset; each page renders its references' current state.
- *Expiry*: bumping a (mailbox, scope kind) epoch makes every older token answer 410 Gone with
  ``syncStateNotFound`` and a ``Location`` to restart from; evicted rounds answer the same.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from devkit.graph_emulator.util import GraphError

Window = tuple[dt.datetime, dt.datetime] | None


class ChangeLog:
    """Append-only references to changed things; ``since(n)`` are the distinct ones after position ``n``."""

    def __init__(self) -> None:
        self._entries: list[Hashable] = []
        self._lock = threading.Lock()

    @property
    def head(self) -> int:
        with self._lock:
            return len(self._entries)

    def append(self, ref: Hashable) -> int:
        with self._lock:
            self._entries.append(ref)
            return len(self._entries)

    def since(self, position: int, until: int) -> list[Hashable]:
        """Distinct references logged in (position, until], ordered by their last change."""
        with self._lock:
            chunk = self._entries[max(position, 0) : until]
        last: dict[Hashable, int] = {}
        for index, ref in enumerate(chunk):
            last[ref] = index
        return sorted(last, key=last.__getitem__)


@dataclass(frozen=True)
class DeltaState:
    mailbox: str
    scope: str
    position: int
    epoch: int
    window: Window


@dataclass
class Round:
    state: DeltaState  # the scope and window; position is where the round ends
    refs: list[Hashable]


def _encode(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise GraphError(400, "BadRequest", "The delta token is malformed.") from exc
    if not isinstance(data, dict):
        raise GraphError(400, "BadRequest", "The delta token is malformed.")
    return data


def _window_out(window: Window) -> list[str] | None:
    return [window[0].isoformat(), window[1].isoformat()] if window else None


def _window_in(value: Any) -> Window:
    if not value:
        return None
    return dt.datetime.fromisoformat(value[0]), dt.datetime.fromisoformat(value[1])


class SyncStateGoneError(GraphError):
    """410 Gone: the token's sync state is not found; restart from ``restart`` (the Location header)."""

    def __init__(self, state: DeltaState | None) -> None:
        super().__init__(
            410,
            "syncStateNotFound",
            "The sync state generation is not found. Restart the synchronization with a full sync.",
        )
        self.state = state


class DeltaEngine:
    """Tokens, rounds and epochs for every mailbox and scope of one emulator."""

    def __init__(self, round_cache: int) -> None:
        self._rounds: OrderedDict[int, Round] = OrderedDict()
        self._round_ids = itertools.count(1)
        self._round_cache = round_cache
        self._epochs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    # -- epochs (expiry on demand) --

    def epoch(self, mailbox: str, scope: str) -> int:
        with self._lock:
            return self._epochs.get((mailbox, scope.split(":", 1)[0]), 0)

    def expire(self, mailbox: str, kind: str | None = None) -> None:
        """Invalidate every token of the mailbox (or of one scope kind such as ``events``)."""
        kinds = [kind] if kind else ["events", "contacts", "contactFolders", "tasks", "todoLists", "messages"]
        with self._lock:
            for name in kinds:
                self._epochs[(mailbox, name)] = self._epochs.get((mailbox, name), 0) + 1

    # -- tokens --

    def delta_token(self, state: DeltaState) -> str:
        return _encode(
            {
                "m": state.mailbox,
                "s": state.scope,
                "q": state.position,
                "e": state.epoch,
                "w": _window_out(state.window),
            }
        )

    def read_delta_token(self, token: str, mailbox: str, scope: str) -> DeltaState:
        data = _decode(token)
        window = _window_in(data.get("w"))
        state = DeltaState(
            str(data.get("m")), str(data.get("s")), int(data.get("q", 0)), int(data.get("e", 0)), window
        )
        self._check(state, mailbox, scope)
        return state

    def start_round(self, state: DeltaState, refs: Sequence[Hashable]) -> tuple[int, Round]:
        round_ = Round(state, list(refs))
        with self._lock:
            round_id = next(self._round_ids)
            self._rounds[round_id] = round_
            while len(self._rounds) > self._round_cache:
                self._rounds.popitem(last=False)
        return round_id, round_

    def skip_token(self, round_id: int, offset: int, state: DeltaState) -> str:
        return _encode(
            {"r": round_id, "o": offset, "m": state.mailbox, "s": state.scope, "w": _window_out(state.window)}
        )

    def read_skip_token(self, token: str, mailbox: str, scope: str) -> tuple[int, Round, int]:
        data = _decode(token)
        with self._lock:
            round_ = self._rounds.get(int(data.get("r", 0)))
        if round_ is None:  # evicted from the token cache, as Outlook does with old tokens
            state = DeltaState(str(data.get("m")), str(data.get("s")), 0, 0, _window_in(data.get("w")))
            if state.mailbox != mailbox or state.scope != scope:
                raise GraphError(400, "BadRequest", "The skip token belongs to another delta query.")
            raise SyncStateGoneError(state)
        self._check(round_.state, mailbox, scope)
        return int(data["r"]), round_, int(data.get("o", 0))

    def _check(self, state: DeltaState, mailbox: str, scope: str) -> None:
        if state.mailbox != mailbox or state.scope != scope:
            raise GraphError(400, "BadRequest", "The delta token belongs to another delta query.")
        if state.epoch != self.epoch(mailbox, scope):
            raise SyncStateGoneError(state)
