"""A thread-safe circuit breaker for the Gemini call.

When Gemini is down or over quota every query would otherwise wait its whole time budget before falling
back to CLIP order. After `failure_threshold` consecutive failures the breaker opens: calls are refused at
once (the re-ranker answers `breaker_open` in microseconds) for `reset_s`. Then it is half-open and lets
exactly one trial call through; its success closes the breaker, its failure opens it for another `reset_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open trial.

    Protocol: call `allow()` before the protected call; if it returned True, report the result with exactly
    one of `record_success()`, `record_failure()` or `release_trial()` (also when the call was abandoned), so a
    half-open trial is never left dangling.
    """

    def __init__(
        self,
        failure_threshold: int,
        reset_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_s <= 0:
            raise ValueError(f"reset_s must be > 0, got {reset_s}")
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # None = closed
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a trial through (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """True when a call may go ahead: closed, or half-open with no trial running yet."""
        with self._lock:
            state = self._state_locked()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        """The call worked (the endpoint answered): close the breaker and forget past failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def release_trial(self) -> None:
        """The call ended without evidence either way (e.g. a 429 for a model on trial): free the trial slot."""
        with self._lock:
            self._trial_in_flight = False

    def record_failure(self) -> None:
        """The call failed (timeout, quota, 5xx, network): count it; open at the threshold or after a trial."""
        with self._lock:
            self._failures += 1
            was_trial = self._trial_in_flight
            self._trial_in_flight = False
            if was_trial or (self._opened_at is None and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                self.times_opened += 1
