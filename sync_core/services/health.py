"""Health: does storage answer? Reports only component states, never settings, hosts or error text."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sync_core.errors import SettingsError, SyncError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthReport:
    checks: Mapping[str, str]  # component → "ok" | "unavailable" | "misconfigured"
    elapsed_ms: float

    @property
    def healthy(self) -> bool:
        return all(state == "ok" for state in self.checks.values())

    def as_json(self) -> dict[str, object]:
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "checks": dict(self.checks),
            "elapsedMs": round(self.elapsed_ms, 1),
        }


def check_health(
    probes: Mapping[str, Callable[[], None]], clock: Callable[[], float] = time.monotonic
) -> HealthReport:
    """Run each probe; a probe passes by returning and fails by raising."""
    started = clock()
    checks: dict[str, str] = {}
    for component, probe in probes.items():
        try:
            probe()
        except SettingsError:
            log.warning("health: %s is misconfigured", component)
            checks[component] = "misconfigured"
        except SyncError as exc:
            # The class name is a stable id; the message may name hosts, so it stays out of the log.
            log.warning("health: %s unavailable (%s)", component, type(exc).__name__)
            checks[component] = "unavailable"
        else:
            checks[component] = "ok"
    return HealthReport(checks=checks, elapsed_ms=(clock() - started) * 1000)
