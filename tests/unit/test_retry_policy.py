"""The one retry policy: what is retried, after how long, and when it gives up."""

from __future__ import annotations

import pytest

from sync_core.domain.retry_policy import RetryPolicy, capped, is_retryable, next_delay, parse_retry_after

POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, retry_after_cap=10.0)


@pytest.mark.parametrize(
    ("status", "replay_safe", "retryable"),
    [
        (429, False, True),  # not executed: any request may go again
        (429, True, True),
        (503, True, True),
        (503, False, False),  # may have executed: an unkeyed write is not sent twice
        (500, True, True),
        (502, False, False),
        (None, True, True),  # no answer at all
        (None, False, False),
        (400, True, False),
        (401, True, False),
        (404, True, False),
        (412, True, False),
        (200, True, False),
    ],
)
def test_what_is_retried(status: int | None, replay_safe: bool, retryable: bool) -> None:
    assert is_retryable(status, replay_safe=replay_safe) is retryable


def test_retry_after_is_honoured_up_to_the_cap_and_backoff_doubles() -> None:
    assert next_delay(POLICY, 1, 429, 2.5, replay_safe=False) == 2.5
    assert next_delay(POLICY, 1, 429, 10.0, replay_safe=False) == 10.0
    assert next_delay(POLICY, 1, 429, 10.5, replay_safe=False) is None  # longer than the cap: give up now
    assert capped(10.5, POLICY) == 10.0
    assert capped(None, POLICY) == 0.5
    assert [next_delay(POLICY, n, 500, None, replay_safe=True) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert next_delay(POLICY, 4, 500, None, replay_safe=True) is None  # attempts used up
    assert next_delay(RetryPolicy(max_attempts=9, max_delay=4.0), 8, None, None, replay_safe=True) == 4.0
    # Retry-After on a 500 is not Graph's or the CRM's signal: back off instead.
    assert next_delay(POLICY, 1, 500, 9.0, replay_safe=True) == 0.5


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 2.128 ", 2.128),
        ("0", 0.0),
        (None, None),
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
