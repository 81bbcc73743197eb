"""Admission control: a bounded queue with a deadline, decided at the door (deterministic: an injected clock)."""

from __future__ import annotations

import pytest

from services.search.admission import EXPIRE_FACTOR, AdmissionControl, retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_before_any_measurement_one_batch_may_wait(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.05, max_queue=100, clock=clock, cold_queue=4)
    assert ac.predicted_wait_s(3) == 0.0
    assert ac.check(3) is None
    shed = ac.check(4)
    assert shed is not None
    assert shed.reason == "deadline"
    assert "not measured its speed yet" in shed.detail
    ac.batch_done(size=1, seconds=0.001)
    assert ac.check(4) is None


def test_the_queue_limit_holds_however_cheap_queries_are(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.05, max_queue=8, clock=clock)
    ac.batch_done(size=1, seconds=0.0)
    assert ac.check(7) is None
    shed = ac.check(8)
    assert shed is not None
    assert shed.reason == "queue_full"
    assert "8 queries are already waiting" in shed.detail
    assert shed.retry_after_s == 1


def test_sheds_when_the_predicted_start_is_past_the_deadline(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.05, max_queue=1000, clock=clock)
    ac.batch_done(size=8, seconds=0.08)  # 10 ms per query
    assert ac.per_item_s == pytest.approx(0.01)
    assert ac.check(4) is None  # 40 ms to start
    assert ac.check(5) is None  # 50 ms: not past the deadline (within float rounding)
    shed = ac.check(6)  # 60 ms
    assert shed is not None
    assert shed.reason == "deadline"
    assert shed.predicted_wait_ms == pytest.approx(60.0)
    assert "50 ms queue deadline" in shed.detail


def test_the_batch_in_progress_counts_until_it_should_be_done(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.055, max_queue=1000, clock=clock)
    ac.batch_done(size=4, seconds=0.04)  # 10 ms per query
    ac.batch_started(size=4)  # expected to finish 40 ms from now
    assert ac.predicted_wait_s(0) == pytest.approx(0.04)
    assert ac.check(1) is None  # 40 + 10 ms
    assert ac.check(2) is not None  # 40 + 20 ms
    clock.now += 0.03
    assert ac.predicted_wait_s(0) == pytest.approx(0.01)
    assert ac.check(4) is None
    clock.now += 1.0  # overran its estimate: nothing negative is added
    assert ac.predicted_wait_s(3) == pytest.approx(0.03)


def test_cost_per_query_follows_recent_batches(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.05, max_queue=1000, clock=clock, alpha=0.5)
    ac.batch_done(size=1, seconds=0.02)
    ac.batch_done(size=20, seconds=0.1)  # batching got cheaper per query: 5 ms
    assert ac.per_item_s == pytest.approx(0.0125)
    ac.batch_done(size=0, seconds=1.0)  # ignored
    assert ac.per_item_s == pytest.approx(0.0125)


def test_a_job_expires_after_twice_the_deadline(clock: FakeClock) -> None:
    ac = AdmissionControl(deadline_s=0.05, max_queue=10, clock=clock)
    submitted = clock.now
    clock.now += EXPIRE_FACTOR * 0.05
    assert not ac.expired(submitted)
    clock.now += 0.001
    assert ac.expired(submitted)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after(0.0) == 1
    assert retry_after(0.2) == 1
    assert retry_after(1.2) == 2


@pytest.mark.parametrize(("deadline", "max_queue"), [(0.0, 1), (-1.0, 1), (0.05, 0)])
def test_nonsense_limits_are_refused(deadline: float, max_queue: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        AdmissionControl(deadline_s=deadline, max_queue=max_queue)
