"""The idle-segment heap of ``streams.segment_expiry``: who is due, held, forgotten; and the settings' rule."""

from __future__ import annotations

import pytest

from streams.segment_expiry import IdleSegments, idle_ttl
from streams.settings import AdsSettings, RetentionSettings

DAY = 86400.0


def test_only_keys_idle_for_the_ttl_are_due_and_a_key_seen_since_moves_on():
    idle: IdleSegments[str] = IdleSegments(10.0)
    idle.seen_one("a", 0, 0.0)
    idle.seen_one("b", 0, 5.0)
    idle.seen_one("c", 1, 0.0)
    assert idle.due_many(0, 9.0) == []
    idle.seen_one("a", 0, 8.0)  # seen again: no longer idle at 10
    assert idle.due_many(0, 15.0) == ["b"]
    assert idle.due_many(0, 18.0) == ["a"]
    assert idle.due_many(1, 10.0) == ["c"]  # per partition, against its own watermark
    assert idle.is_idle("a", 18.0) and not idle.is_idle("a", 17.9) and not idle.is_idle("z", 1e9)


def test_a_held_key_is_offered_again_until_forgotten_or_seen():
    idle: IdleSegments[str] = IdleSegments(10.0)
    idle.seen_one("a", 0, 0.0)
    assert idle.due_many(0, 10.0) == ["a"]
    idle.hold("a")
    assert idle.due_many(0, 11.0) == ["a"]
    idle.hold("a")
    idle.seen_one("a", 0, 11.0)  # traffic: it leaves the held set and waits for its new time
    assert idle.due_many(0, 12.0) == []
    assert idle.due_many(0, 21.0) == ["a"]
    idle.forget("a")
    assert idle.due_many(0, 100.0) == [] and len(idle) == 0


def test_ttl_zero_tracks_nothing():
    idle: IdleSegments[str] = IdleSegments(0.0)
    idle.seen_one("a", 0, 0.0)
    assert len(idle) == 0 and idle.due_many(0, 1e12) == [] and not idle.is_idle("a", 1e12)
    with pytest.raises(ValueError):
        IdleSegments(-1.0)


def test_the_ttl_an_engine_keeps_outlasts_what_can_be_open():
    from tests.unit.streams.test_retention_engine import engine as retention_engine
    from tests.unit.streams.test_segment_expiry import ads_engine
    from streams.store import DictStore

    assert idle_ttl(0.0, 600.0) == 0.0  # off
    assert idle_ttl(3600.0, 600.0) == 3600.0
    assert idle_ttl(300.0, 600.0) == 600.0  # never shorter than a window
    assert AdsSettings().segment_idle_ttl_s == RetentionSettings().segment_idle_ttl_s == 30 * DAY
    # a window longer than the TTL (chaos_retention: 400 days) is valid; the engines wait for it
    assert RetentionSettings(outcome_window_s=400 * DAY).segment_idle_ttl_s == 30 * DAY
    assert ads_engine(DictStore(), ttl=300.0).segments.idle.ttl == 600.0  # its window (test_segment_expiry.py)
    long = retention_engine(DictStore(), outcome_window_s=400 * DAY, segment_idle_ttl_s=30 * DAY)
    assert long._idle.ttl == 400.0  # days: the outcome window (grace 0 there)
