"""Engagement features: order independence, known values, serialisation, eviction."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.retention.features import (
    DX,
    N_STATE,
    expired_many,
    features_many,
    new_states,
    state_from_bytes,
    state_to_bytes,
    update_many,
    update_one,
)
from policy.retention.schema import INTERVENTION, PURCHASE, SESSION, EventBatch

event = st.tuples(
    st.integers(0, 3),
    st.floats(0.0, 60.0, allow_nan=False),
    st.sampled_from([SESSION, PURCHASE, INTERVENTION]),
    st.integers(1, 4),
)


def batch(rows):
    if not rows:
        return EventBatch.empty()
    u, t, k, v = map(np.array, zip(*rows))
    value = np.where(k == PURCHASE, v * 10.0, np.where(k == INTERVENTION, v, 0.0))
    return EventBatch(u, t, k, value)


@settings(max_examples=60, deadline=None)
@given(st.lists(event, max_size=40), st.randoms(use_true_random=False), st.integers(0, 40))
def test_any_order_and_any_batching_gives_the_same_features(rows, rnd, cut):
    a = update_many(new_states(4), batch(rows))
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    b = update_many(update_many(new_states(4), batch(shuffled[:cut])), batch(shuffled[cut:]))
    np.testing.assert_allclose(features_many(a, 61.0), features_many(b, 61.0), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.all(np.isfinite(features_many(a, 61.0)))


def test_known_values():
    ev = batch([(0, 10.0, SESSION, 1), (0, 10.5, PURCHASE, 3), (0, 17.0, SESSION, 1), (1, 5.0, INTERVENTION, 4)])
    s = update_many(new_states(3), ev)
    x = features_many(s, 24.0)
    assert x.shape == (3, DX)
    assert x[0, 0] == np.log1p(7.0)  # recency: last session at 17
    np.testing.assert_allclose(x[0, 1], np.exp(-14 / 7) + np.exp(-7 / 7))
    np.testing.assert_allclose(x[0, 3], np.log1p(30.0 * np.exp(-13.5 / 30)))
    np.testing.assert_allclose(x[0, 6], np.log1p(30.0))
    np.testing.assert_allclose(x[0, 7], np.log1p(14.0))
    np.testing.assert_allclose(x[1, 8], np.log1p(19.0))
    assert s[1, 5] == 4.0  # last treatment
    np.testing.assert_array_equal(x[2], features_many(new_states(1), 24.0)[0])  # never seen


def test_bytes_roundtrip_update_one_and_expiry():
    s = update_one(new_states(1)[0], batch([(7, 3.0, SESSION, 1), (7, 4.0, PURCHASE, 2)]))
    raw = state_to_bytes(s)
    assert len(raw) == 8 * N_STATE
    np.testing.assert_array_equal(state_from_bytes(raw), s)
    states = np.stack([s, new_states(1)[0]])
    np.testing.assert_array_equal(expired_many(states, 10.0, 30.0), [False, True])
    np.testing.assert_array_equal(expired_many(states, 40.0, 30.0), [True, True])
