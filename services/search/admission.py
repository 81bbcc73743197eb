"""Admission control for the query batcher: a bounded queue with a deadline, decided at the door.

Past capacity an unbounded queue makes every request late: the worker serves requests whose clients gave up
long ago, completed throughput falls and latency grows without bound. Here a request is admitted only when it
is predicted to *start* within `deadline_s`; otherwise it is answered at once (503 + Retry-After), so the
admitted ones keep their latency, the shed ones cost microseconds, and the queue signal tells the autoscaler.

The prediction is arithmetic over what the worker just did: an exponentially weighted mean of seconds per query
in recent batches (per item, so it already reflects how well queries batch at the current load), times the
queries waiting ahead, plus what is left of the batch in progress. Batches grow under load and the cost per
query falls, so the admitted queue grows with them. Before the first batch has been measured, at most
`cold_queue` requests (one batch) may wait. A request that nonetheless waited more than
`EXPIRE_FACTOR` x the deadline (the machine stalled) is dropped when it reaches the worker.

Nothing here reads the wall clock directly: `clock` is injected, so the unit tests are deterministic.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ShedReason = Literal["queue_full", "deadline", "expired"]
EXPIRE_FACTOR = 2.0  # a job that waited this many deadlines is not worth starting: its client has likely gone
EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class Shed:
    """Why a request was not served, and when to come back."""

    reason: ShedReason
    detail: str
    retry_after_s: int
    predicted_wait_ms: float | None = None


class Overloaded(Exception):  # noqa: N818
    """Raised to a request that the admission control sheds (the route turns it into a 503)."""

    def __init__(self, shed: Shed) -> None:
        super().__init__(shed.detail)
        self.shed = shed


class AdmissionControl:
    """Decides, from the queue depth and the measured cost per query, whether a request can start in time.

    Thread-safe: `check` runs on the event loop, `batch_started` / `batch_done` on the worker thread.
    """

    def __init__(
        self,
        deadline_s: float,
        max_queue: int,
        clock: Callable[[], float] = time.perf_counter,
        alpha: float = EWMA_ALPHA,
        cold_queue: int = 32,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.deadline_s = deadline_s
        self.max_queue = max_queue
        self.clock = clock
        self.alpha = alpha
        self.cold_queue = cold_queue
        self._lock = threading.Lock()
        self._per_item_s: float | None = None  # EWMA of batch seconds / batch size
        self._busy_since: float | None = None
        self._busy_items = 0

    @property
    def per_item_s(self) -> float | None:
        return self._per_item_s

    def predicted_wait_s(self, ahead: int, now: float | None = None) -> float:
        """Seconds until a request that finds `ahead` queries waiting would start (0 before any measurement)."""
        with self._lock:
            per_item = self._per_item_s
            if per_item is None:
                return 0.0
            now = self.clock() if now is None else now
            remaining = 0.0
            if self._busy_since is not None:
                remaining = max(0.0, self._busy_since + per_item * self._busy_items - now)
            return remaining + ahead * per_item

    def check(self, ahead: int) -> Shed | None:
        """None to admit a request that finds `ahead` queries waiting; otherwise the reason to shed it."""
        if ahead >= self.max_queue:
            wait = self.predicted_wait_s(ahead)
            return Shed(
                "queue_full",
                f"overloaded: {ahead} queries are already waiting (the limit is {self.max_queue}); retry shortly",
                retry_after(wait),
                round(wait * 1000.0, 3),
            )
        if self._per_item_s is None and ahead >= self.cold_queue:
            return Shed(
                "deadline",
                f"overloaded: {ahead} queries are already waiting and the service has not measured its speed yet; "
                "retry shortly",
                1,
            )
        wait = self.predicted_wait_s(ahead)
        if wait > self.deadline_s:
            return Shed(
                "deadline",
                f"overloaded: this query would wait ~{wait * 1000.0:.0f} ms to start, past the "
                f"{self.deadline_s * 1000.0:.0f} ms queue deadline; retry shortly",
                retry_after(wait),
                round(wait * 1000.0, 3),
            )
        return None

    def expired(self, submitted: float, now: float | None = None) -> bool:
        """Whether a job submitted at `submitted` waited too long to be worth starting."""
        now = self.clock() if now is None else now
        return now - submitted > EXPIRE_FACTOR * self.deadline_s

    def batch_started(self, size: int, now: float | None = None) -> None:
        with self._lock:
            self._busy_since = self.clock() if now is None else now
            self._busy_items = size

    def batch_done(self, size: int, seconds: float) -> None:
        """Fold one batch's cost into the per-query estimate."""
        if size <= 0:
            return
        per_item = max(0.0, seconds) / size
        with self._lock:
            self._busy_since = None
            self._busy_items = 0
            if self._per_item_s is None:
                self._per_item_s = per_item
            else:
                self._per_item_s += self.alpha * (per_item - self._per_item_s)


def retry_after(wait_s: float) -> int:
    """Retry-After in whole seconds (HTTP's delay-seconds), at least 1."""
    return max(1, math.ceil(wait_s))
