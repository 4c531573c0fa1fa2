"""The health report: component states only, never error text."""

from __future__ import annotations

from sync_core.errors import SettingsError, StoreUnavailableError
from sync_core.services.health import check_health


def test_all_probes_passing_is_healthy() -> None:
    report = check_health({"storage": lambda: None})
    assert report.healthy
    assert report.as_json()["status"] == "healthy"
    assert report.as_json()["checks"] == {"storage": "ok"}


def test_a_failing_probe_is_reported_without_its_message() -> None:
    def storage() -> None:
        raise StoreUnavailableError("connection refused to http://10.0.0.1:10002 with AccountKey=secret")

    def settings() -> None:
        raise SettingsError({"CRM_API_KEY": "is required but not set"})

    report = check_health({"storage": storage, "settings": settings})
    assert not report.healthy
    body = report.as_json()
    assert body["checks"] == {"storage": "unavailable", "settings": "misconfigured"}
    assert "AccountKey" not in repr(body)
    assert "10.0.0.1" not in repr(body)
