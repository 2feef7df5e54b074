"""The event-time rule both engines share: a watermark per partition, and events too far ahead refused."""

from __future__ import annotations

from streams.event_time import EventClock

DAY = 86_400.0


def test_an_event_far_ahead_of_the_watermark_and_the_clock_is_too_far():
    clock = EventClock(max_skew_s=100.0, clock=lambda: 1_000.0)
    assert not clock.too_far(0, 1_100.0)  # within the skew of the wall clock
    assert clock.too_far(0, 1_100.5)
    assert clock.advance(0, 1_050.0) and clock.mark(0) == 1_050.0
    assert not clock.too_far(0, 1_150.0)  # within the skew of the watermark now
    assert clock.mark(1) is None and clock.too_far(1, 1_150.0)  # partitions are separate


def test_the_watermark_only_moves_forward_and_a_refused_event_moves_nothing():
    clock = EventClock(max_skew_s=10.0, clock=lambda: 0.0)
    assert clock.advance(3, 5.0)
    assert not clock.advance(3, 4.0) and clock.mark(3) == 5.0
    assert clock.too_far(3, 1e9) and clock.mark(3) == 5.0
    assert list(clock.items()) == [(3, 5.0)]
    clock.clear()
    assert clock.mark(3) is None


def test_a_clock_in_days_compares_in_days():
    clock = EventClock(max_skew_s=DAY, clock=lambda: 10 * DAY, unit_s=DAY)
    assert clock.max_skew == 1.0
    assert not clock.too_far(0, 11.0) and clock.too_far(0, 11.01)
