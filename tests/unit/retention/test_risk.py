"""Churn-risk serving (torch-free) and its offline training."""

from __future__ import annotations

import numpy as np
import pytest

from policy.retention.exceptions import RiskModelError
from policy.retention.features import DX
from policy.retention.risk import RiskModel


def model(seed=0, hidden=4):
    rng = np.random.default_rng(seed)
    return RiskModel(
        mean=rng.normal(size=DX), sd=np.ones(DX), w1=rng.normal(size=(DX, hidden)), b1=np.zeros(hidden),
        w2=rng.normal(size=hidden), b2=0.2, tau2=0.5, meta={"version": "t"},
    )


def test_predict_adapt_and_state(tmp_path):
    m = model()
    x = np.random.default_rng(1).normal(size=(400, DX))
    segs = ["a"] * 400
    p0 = m.predict_many(segs, x)
    assert np.all((p0 > 0) & (p0 < 1))
    m.adapt_many(segs, x, np.ones(400))  # everyone churned: the segment's offset must rise
    mean, var, n = m.offset("a")
    assert mean > 0.5 and var < 0.5 and n == 400
    assert np.all(m.predict_many(segs, x) > p0)
    np.testing.assert_array_equal(m.predict_many(["b"] * 400, x), p0)  # other segments untouched
    m2 = RiskModel.load(m.save(tmp_path / "risk"))
    np.testing.assert_allclose(m2.predict_many(["b"] * 400, x), p0)
    m2.load_state("a", m.state_bytes("a"))
    np.testing.assert_allclose(m2.predict_many(segs, x), m.predict_many(segs, x))
    with pytest.raises(RiskModelError):
        m2.load_state("a", b"junk")
    with pytest.raises(RiskModelError):
        m.predict_many(["a"], np.zeros((1, DX + 1)))
    with pytest.raises(RiskModelError):
        RiskModel.load(tmp_path / "missing")


def test_training_learns_risk_from_history():
    from policy.retention.history import simulate_history
    from policy.retention.train import RiskTrainConfig, train_risk
    from policy.simulator.retention import RetentionWorld, draw_segments

    names, params = draw_segments(2, 3, seed=3)
    world = RetentionWorld(names, params, 300, seed=4)
    logs = simulate_history(world, rounds=2, warmup_rounds=3)
    assert len(logs) == 2 * world.n_users and logs.k == 5
    risk = train_risk(logs, RiskTrainConfig(epochs=40, batch_size=256, lr=1e-2, seed=0))
    true = world.churn_probability()  # state after the logged rounds
    rows = logs.action == 0
    pred = risk.predict_many([names[s] for s in logs.segment[rows]], logs.context[rows])
    churned = logs.value[rows] <= 0
    # discriminates churners from returners (AUC well above chance)
    order = np.argsort(pred)
    ranks = np.empty(len(pred))
    ranks[order] = np.arange(len(pred))
    auc = (ranks[churned].mean() - (churned.sum() - 1) / 2) / (~churned).sum()
    assert auc > 0.75
    # a new segment's prediction integrates the offset prior; adapting on the segment's outcomes calibrates
    assert abs(pred.mean() - churned.mean()) < 0.1
    seg_rows = [names[s] for s in logs.segment[rows]]
    risk.adapt_many(seg_rows, logs.context[rows], churned)
    adapted = risk.predict_many(seg_rows, logs.context[rows])
    assert abs(adapted.mean() - churned.mean()) < 0.03
    assert true.shape == (world.n_users,)
