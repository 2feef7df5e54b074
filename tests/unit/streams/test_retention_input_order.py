"""The retention agent's check of its input order (``streams.agents.retention.in_order``): the next offset of
a partition passes, one below it is a repeat (already processed), one above it a gap (messages between not
delivered), each counted; the first offset after a start or rebalance passes."""

from __future__ import annotations

from collections import Counter

from streams.agents.retention import in_order


def test_in_order_passes_repeats_and_gaps_are_told_apart_and_counted():
    seen: dict = {}
    counters: Counter = Counter()
    assert in_order(seen, "s", 0, 40, counters) is None  # first after an assignment
    assert in_order(seen, "s", 0, 41, counters) is None
    assert in_order(seen, "s", 1, 7, counters) is None  # partitions are independent
    assert in_order(seen, "s", 0, 41, counters) == 42  # a repeat: below the next one
    assert in_order(seen, "s", 0, 50, counters) == 42  # a gap: 42..49 never delivered
    assert in_order(seen, "s", 0, 51, counters) is None  # the order goes on after the gap
    assert counters == Counter(retention_offset_repeats=1, retention_offset_gaps=1)
