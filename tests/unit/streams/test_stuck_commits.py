"""``streams.agents.stall.stuck_commits``: a partition is stuck when its committed offset stays the same, below
the offset the agent expects next, for ``stall_s``; moving, catching up or becoming unknown starts it over."""

from __future__ import annotations

from streams.agents.stall import stuck_commits

TP = ("sessions", 5)


def test_a_committed_offset_unchanged_behind_the_agent_for_stall_s_is_stuck():
    seen: dict = {}
    assert stuck_commits(seen, {TP: 782}, {TP: 1499}, now=0.0, stall_s=60) == []  # first seen behind
    assert stuck_commits(seen, {TP: 782}, {TP: 1600}, now=59.0, stall_s=60) == []  # not for long enough
    assert stuck_commits(seen, {TP: 782}, {TP: 1700}, now=60.0, stall_s=60) == [TP]


def test_moving_catching_up_or_unknown_starts_over():
    seen: dict = {}
    stuck_commits(seen, {TP: 782}, {TP: 1499}, now=0.0, stall_s=60)
    assert stuck_commits(seen, {TP: 900}, {TP: 1499}, now=70.0, stall_s=60) == []  # it moved: a new clock
    assert stuck_commits(seen, {TP: 900}, {TP: 1499}, now=129.0, stall_s=60) == []
    assert stuck_commits(seen, {TP: 1499}, {TP: 1499}, now=200.0, stall_s=60) == []  # caught up
    assert seen == {}
    stuck_commits(seen, {TP: 10}, {TP: 20}, now=300.0, stall_s=60)
    assert stuck_commits(seen, {}, {TP: 20}, now=400.0, stall_s=60) == []  # unreadable: not judged
    assert seen == {}
    stuck_commits(seen, {TP: 10}, {TP: 20}, now=500.0, stall_s=60)
    assert stuck_commits(seen, {TP: 10}, {}, now=600.0, stall_s=60) == []  # partition gone (rebalance)
    assert seen == {}
