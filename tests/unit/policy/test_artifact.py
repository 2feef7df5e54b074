"""PolicyArtifact: save/load round trip, atomic layout, and refusal of malformed artifacts."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from policy.artifact import (
    ARRAYS_FILE,
    META_FILE,
    ArtifactError,
    ArtifactMeta,
    PolicyArtifact,
    TrainingDataSummary,
    now_utc,
)


def make_artifact(seed: int = 0, dx: int = 3, da: int = 2, hidden: int = 5, d: int = 4) -> PolicyArtifact:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    meta = ArtifactMeta(
        version="test-1",
        dx=dx,
        da=da,
        d=d,
        hidden=hidden,
        created_at=now_utc(),
        training_data=TrainingDataSummary(
            source="unit test", n_events=10, n_segments=2, n_train_segments=1, n_heldout_segments=1,
            reward_mean=0.1, reward_std=0.3,
        ),
        metrics={"heldout_nll": 0.5},
        curves={"heldout_nll": [0.7, 0.5]},
    )
    return PolicyArtifact(
        w1=rng.normal(size=(dx + da, hidden)),
        b1=rng.normal(size=hidden),
        w2=rng.normal(size=(hidden, d - 1)),
        b2=rng.normal(size=d - 1),
        prior_mean=rng.normal(size=d),
        prior_cov=a @ a.T + 0.1 * np.eye(d),
        noise_var=0.2,
        meta=meta,
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    art = make_artifact()
    path = art.save(tmp_path / "art")
    assert sorted(p.name for p in path.iterdir()) == sorted([META_FILE, ARRAYS_FILE])
    back = PolicyArtifact.load(path)
    for name, arr in art.arrays().items():
        np.testing.assert_array_equal(back.arrays()[name], arr)
    assert back.meta == art.meta
    assert back.meta.created_at.tzinfo is not None
    u = np.random.default_rng(1).normal(size=(7, 5))
    np.testing.assert_array_equal(back.phi_numpy(u), art.phi_numpy(u))
    assert np.all(art.phi_numpy(u)[:, -1] == 1.0)


def test_save_replaces_existing_artifact_and_leaves_no_temporaries(tmp_path: Path) -> None:
    make_artifact(seed=0).save(tmp_path / "art")
    second = make_artifact(seed=1)
    second.save(tmp_path / "art")
    np.testing.assert_array_equal(PolicyArtifact.load(tmp_path / "art").w1, second.w1)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def _corrupt_arrays(path: Path, **changes: np.ndarray) -> None:
    with np.load(path / ARRAYS_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(path / ARRAYS_FILE, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"w1": np.zeros((4, 5))}, "w1"),
        ({"b2": np.array([0.0, np.nan, 1.0])}, "NaN"),
        ({"prior_cov": np.diag([1.0, 1.0, 1.0, -1.0])}, "positive definite"),
        ({"prior_cov": np.eye(4) + np.triu(np.ones((4, 4)), 1)}, "symmetric"),
        ({"noise_var": np.array(0.0)}, "noise_var"),
        ({"noise_var": np.array([1.0, 2.0])}, "noise_var"),
        ({"prior_mean": None}, "missing"),
        ({"extra": np.zeros(2)}, "unexpected"),
    ],
)
def test_malformed_arrays_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    path = make_artifact().save(tmp_path / "art")
    _corrupt_arrays(path, **change)
    with pytest.raises(ArtifactError, match=message):
        PolicyArtifact.load(path)


def test_malformed_meta_is_refused(tmp_path: Path) -> None:
    path = make_artifact().save(tmp_path / "art")
    meta = json.loads((path / META_FILE).read_text())

    bad = dict(meta, unexpected_field=1)
    (path / META_FILE).write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="ArtifactMeta"):
        PolicyArtifact.load(path)

    bad = dict(meta, created_at="2026-01-01T00:00:00")  # naive time
    (path / META_FILE).write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="timezone"):
        PolicyArtifact.load(path)

    bad = dict(meta, d=5)  # arrays say d=4
    (path / META_FILE).write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="shape"):
        PolicyArtifact.load(path)

    (path / META_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        PolicyArtifact.load(path)


def test_missing_or_garbage_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        PolicyArtifact.load(tmp_path / "nope")
    path = make_artifact().save(tmp_path / "art")
    (path / ARRAYS_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="npz"):
        PolicyArtifact.load(path)
    (path / ARRAYS_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing arrays.npz"):
        PolicyArtifact.load(path)


def test_pickled_object_arrays_are_not_loaded(tmp_path: Path) -> None:
    path = make_artifact().save(tmp_path / "art")
    obj = np.empty(4, dtype=object)
    obj[:] = [1.0, 2.0, 3.0, 4.0]
    _corrupt_arrays(path, prior_mean=obj)
    with pytest.raises(ArtifactError):
        PolicyArtifact.load(path)


def test_constructor_validates_too() -> None:
    art = make_artifact()
    with pytest.raises(ArtifactError, match="prior_mean"):
        PolicyArtifact(**{**art.arrays(), "prior_mean": np.zeros(3), "meta": art.meta})
    with pytest.raises(ValueError):
        ArtifactMeta(**{**art.meta.model_dump(), "created_at": datetime(2026, 1, 1)})
    with pytest.raises(ValueError):
        ArtifactMeta(**{**art.meta.model_dump(), "version": "has space"})
