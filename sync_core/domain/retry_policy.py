"""When to try an outbound HTTP request again, and after how long: the one retry policy (pure, no I/O).

The Graph and CRM clients each loop ``send → next_delay → sleep``; this module is the only place that decides.

- 429 means the request was not executed: it is retried whatever the method, after ``Retry-After``.
- 503, other 5xx and network failures (no answer) may have executed: only *replay-safe* requests are retried
  (reads, deletes, and writes carrying an idempotency key), after ``Retry-After`` when given, else after an
  exponential back-off.
- A ``Retry-After`` longer than the cap is not slept through in-process: the caller gives up and raises
  ``ThrottledError`` with the capped value, so the platform (queue visibility, the CRM) waits instead.
- Everything else (2xx, 3xx, other 4xx) is final.
"""

from __future__ import annotations

from dataclasses import dataclass

THROTTLED = 429
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.5  # seconds before the second attempt; doubles per attempt
    max_delay: float = 8.0
    retry_after_cap: float = 60.0  # the longest Retry-After honoured in-process (RETRY_AFTER_CAP_SECONDS)

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as delta-seconds (what Graph and the CRM send); None when absent or in another form."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def is_retryable(status: int | None, *, replay_safe: bool) -> bool:
    """Whether an answer with ``status`` (None: no answer) may be retried at all."""
    if status == THROTTLED:
        return True
    return replay_safe and (status is None or status >= 500)


def next_delay(
    policy: RetryPolicy, attempt: int, status: int | None, retry_after: float | None, *, replay_safe: bool
) -> float | None:
    """Seconds to wait before another attempt, or None to stop with this answer.

    ``attempt`` is the number of the attempt just made (1 for the first); ``status`` None means no answer.
    """
    if not is_retryable(status, replay_safe=replay_safe) or attempt >= policy.max_attempts:
        return None
    if status in _RETRY_AFTER_STATUSES and retry_after is not None:
        return retry_after if retry_after <= policy.retry_after_cap else None
    return policy.backoff(attempt)


def capped(retry_after: float | None, policy: RetryPolicy) -> float:
    """The wait to report in ``ThrottledError``: Retry-After (or the back-off) no longer than the cap."""
    wanted = retry_after if retry_after is not None else policy.backoff(1)
    return min(wanted, policy.retry_after_cap)
