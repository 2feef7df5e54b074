"""An artifact is scored on a probe batch before it may serve: finite but absurd ones are refused."""

from __future__ import annotations

import dataclasses

import pytest

from policy.adapter import check_serves
from policy.artifact import ArtifactError
from policy.retention.artifacts import RetentionArtifacts, check_serves as check_retention_serves
from tests.unit.retention.test_decide import artifact, risk_model


def test_a_sound_artifact_serves_the_probe():
    check_serves(artifact(0))
    check_retention_serves(RetentionArtifacts(artifact(0), risk_model(), {}))


@pytest.mark.parametrize("fields", [("w1", "b1", "w2", "b2", "prior_mean"), ("prior_mean",)])
def test_finite_but_absurd_uplift_weights_are_refused(fields):
    """Every array x 1e300 (the kernel then fails on every batch), or the prior alone (finite scores
    near 1e300: no kernel error, but no policy either)."""
    good = artifact(0)
    absurd = dataclasses.replace(good, **{f: getattr(good, f) * 1e300 for f in fields})
    with pytest.raises(ArtifactError, match="probe"):
        check_serves(absurd)
    with pytest.raises(ArtifactError, match="probe"):
        check_retention_serves(RetentionArtifacts(absurd, risk_model(), {}))


def test_finite_but_absurd_risk_weights_are_refused():
    risk = risk_model()
    absurd = dataclasses.replace(risk, w1=risk.w1 * 1e300, w2=risk.w2 * 1e300)
    with pytest.raises(ArtifactError, match="risk model"):
        check_retention_serves(RetentionArtifacts(artifact(0), absurd, {}))
