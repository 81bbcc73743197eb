"""Circuit breaker: opens after N consecutive failures, half-opens for exactly one trial after the reset time."""

from __future__ import annotations

import threading

import pytest

from clipsearch.rerank.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_success()  # resets the count: failures must be consecutive
    assert breaker.consecutive_failures == 0
    for _ in range(3):
        assert breaker.state is BreakerState.CLOSED
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(10.0)
    assert breaker.times_opened == 1


def test_half_open_allows_one_trial_and_success_closes(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # nobody else while it runs
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_failed_trial_reopens_for_a_full_reset_period(clock: FakeClock) -> None:
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 2
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_exactly_one_trial_under_concurrency(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        ok = breaker.allow()
        with lock:
            allowed.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1


@pytest.mark.parametrize(("failures", "reset_s"), [(0, 1.0), (1, 0.0)])
def test_rejects_nonsense_configuration(failures: int, reset_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures, reset_s)


def test_released_trial_leaves_the_breaker_half_open_for_the_next_caller(clock: FakeClock) -> None:
    """How the re-ranker holds a retired model off: threshold 1, a long reset, and a trial that ended in
    something other than "found" or "not found" (a 429, say) hands the trial to the next request."""
    breaker = CircuitBreaker(1, 3600.0, clock=clock)
    breaker.record_failure()  # "not found"
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 3600.0
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.release_trial()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the next caller gets the trial
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
