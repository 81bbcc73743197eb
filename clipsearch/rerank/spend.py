"""The Gemini spend guard: a process-wide cap on paid calls per minute and on dollars per UTC day.

Every Gemini HTTP call (retries included) takes one slot of `rerank.spend_requests_per_minute` from a moving
window (the maintained `limits` library, not a hand-written counter); every answer adds its price, computed
from the tokens the API says it counted (`usage_metadata`) at the answering model's profile prices, to the
day's total. When either is reached the re-ranker does not call Gemini and serves CLIP order with fallback
reason `budget`; answers from the response cache cost nothing and are still served.

The guard is per process (per replica): the cluster-wide ceiling is the setting times the replica count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

BUDGET = "budget"  # the fallback reason
REQUESTS_PER_MINUTE = "requests_per_minute"
USD_PER_DAY = "usd_per_day"
LIMITS = (REQUESTS_PER_MINUTE, USD_PER_DAY)
_NAMESPACE = "gemini-spend"


@dataclass(frozen=True)
class SpendSnapshot:
    """What the metrics export at each scrape."""

    spent_today_usd: float
    usd_per_day: float
    requests_per_minute: int
    denials: dict[str, int]
    exhausted: dict[str, bool]


class SpendGuard:
    """Thread-safe; one instance per re-ranker (so per process)."""

    def __init__(
        self, requests_per_minute: int, usd_per_day: float, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.usd_per_day = usd_per_day
        self._rpm = RateLimitItemPerMinute(requests_per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._clock = wall_clock
        self._lock = threading.Lock()
        self._day = self._today()
        self._spent = 0.0
        self._denials = dict.fromkeys(LIMITS, 0)
        self._rpm_denied_at: float | None = None

    def _today(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self._clock()))

    def _roll_day(self) -> None:
        today = self._today()
        if today != self._day:
            self._day, self._spent = today, 0.0

    def _usd_denial(self) -> str | None:
        self._roll_day()
        if self._spent >= self.usd_per_day:
            return (
                f"the daily Gemini budget of ${self.usd_per_day:.2f} is spent (${self._spent:.4f} today, UTC); "
                "re-ranking resumes at midnight UTC"
            )
        return None

    def _rpm_denial(self) -> str:
        return f"the spend guard's {self.requests_per_minute} Gemini calls per minute are used up"

    def check(self) -> str | None:
        """Would a call be allowed now? None, or why not. Takes nothing (used before preparing a request)."""
        with self._lock:
            denied = self._usd_denial()
            if denied is not None:
                self._denials[USD_PER_DAY] += 1
                return denied
            if not self._limiter.test(self._rpm, _NAMESPACE):
                self._denials[REQUESTS_PER_MINUTE] += 1
                self._rpm_denied_at = self._clock()
                return self._rpm_denial()
            return None

    def acquire(self) -> str | None:
        """Take one call's slot: None when the call may go ahead, else why it may not."""
        with self._lock:
            denied = self._usd_denial()
            if denied is not None:
                self._denials[USD_PER_DAY] += 1
                return denied
            if not self._limiter.hit(self._rpm, _NAMESPACE):
                self._denials[REQUESTS_PER_MINUTE] += 1
                self._rpm_denied_at = self._clock()
                return self._rpm_denial()
            return None

    def record(self, usd: float) -> None:
        """Add one answer's price (from its counted tokens) to today's spend."""
        if usd <= 0:
            return
        with self._lock:
            self._roll_day()
            self._spent += usd

    def snapshot(self) -> SpendSnapshot:
        with self._lock:
            self._roll_day()
            now = self._clock()
            rpm_recent = self._rpm_denied_at is not None and now - self._rpm_denied_at < 60.0
            return SpendSnapshot(
                spent_today_usd=self._spent,
                usd_per_day=self.usd_per_day,
                requests_per_minute=self.requests_per_minute,
                denials=dict(self._denials),
                exhausted={USD_PER_DAY: self._spent >= self.usd_per_day, REQUESTS_PER_MINUTE: rpm_recent},
            )
