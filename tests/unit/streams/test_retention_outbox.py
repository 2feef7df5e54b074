"""The retention outbox (``streams.retention_book``): an action decided and written to the state but never
delivered (the worker died in between) is found by the restored engine, with its bytes as first decided;
once delivered it is gone from the state; an erased user's unsent actions go with them."""

from __future__ import annotations

from streams.retention_engine import Outputs
from streams.store import DictStore
from tests.unit.streams.test_retention_engine import actions, engine, session, warm


def _decide_then_die(store: DictStore, users: list[str]) -> Outputs:
    """A review whose state reaches the store, then the process dies before the agent sends its actions."""
    first = engine(store, eps=1.0)
    warm(first, users)
    return first.process_many([session(users[0], 1.2)])


def test_actions_written_but_never_delivered_are_found_after_a_restart():
    users = [f"u{i}" for i in range(8)]
    store = DictStore()
    out = _decide_then_die(store, users)
    assert len(out.actions) == len(users)

    second = engine(store, eps=1.0)
    second.restore()
    unsent = second.unsent()
    assert sorted((u.key, u.value) for u in unsent) == sorted(out.actions)
    assert {u.partition for u in unsent} == {0} and second.unsent([1]) == []
    # The replayed batch decides nothing again: the restored outbox is the only copy of these actions.
    assert actions(second.process_many([session(users[0], 1.2)])) == []


def test_a_restart_in_the_middle_of_a_review_finds_the_written_slices_and_decides_the_rest_once():
    users = [f"u{i}" for i in range(20)]
    store = DictStore()
    first = engine(store, eps=1.0, review_step=5)
    warm(first, users)
    steps = first.process_steps([session("u0", 1.2)], Outputs())
    next(steps)  # paused after 5 actions, their state written; the process dies before sending any

    second = engine(store, eps=1.0, review_step=5)
    second.restore()
    found = {u.decision_id for u in second.unsent()}
    replayed = {a["decision_id"] for a in actions(second.process_many([session("u0", 1.2)]))}
    assert len(found) == 5 and len(replayed) == 15 and not found & replayed
    assert second.pending_count() == 20


def test_delivered_actions_leave_the_outbox():
    users = [f"u{i}" for i in range(6)]
    store = DictStore()
    eng = engine(store, eps=1.0)
    warm(eng, users)
    eng.process_many([session(users[0], 1.2)])
    assert len(eng.unsent()) == len(users)
    eng.sent_all([0])
    eng.flush()
    assert eng.unsent() == []
    restored = engine(store, eps=1.0)
    restored.restore()
    assert restored.unsent() == []


def test_an_erased_users_unsent_actions_are_dropped():
    from tests.unit.streams.test_retention_engine import TOPICS, _raw, iso

    users = [f"u{i}" for i in range(4)]
    store = DictStore()
    _decide_then_die(store, users)
    second = engine(store, eps=1.0)
    second.restore()
    erase = _raw(TOPICS.erasure_requests.name, 0, "u1",
                 {"request_id": "e1", "user_id": "u1", "requested_at": iso(1.3)})
    second.process_many([erase])
    assert sorted(u.key for u in second.unsent()) == [b"u0", b"u2", b"u3"]
    restored = engine(store, eps=1.0)
    restored.restore()
    assert sorted(u.key for u in restored.unsent()) == [b"u0", b"u2", b"u3"]
