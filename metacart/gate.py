"""The safe hot-swap: publish a candidate artifact only if the logs say it is not worse than what serves.

``metacart publish-policy --gate LOG`` evaluates the candidate and the serving artifact on the same
logged rows (:func:`metacart.evaluate.run_evaluation`, both served as the workers serve them: frozen by
default, adapting by replay with ``--gate-replay``) and takes the paired 95 % interval of
``V(candidate) - V(serving)`` under one estimator (SNIPS by default). It publishes only when the interval's
lower bound is above ``margin`` and both policies' effective sample sizes reach ``min_ess`` (an interval
resting on a handful of effective rows is not evidence): ``margin = 0`` asks for evidence that the candidate is better; a negative
margin (``-0.005``) asks only that it is not worse by more than that (non-inferiority). Otherwise it
refuses. ``--force`` publishes anyway and says so; either way the numbers travel in the policy-update
event (``PolicyUpdate.gate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metacart.evaluate import run_evaluation
from policy.ope.estimators import ESTIMATORS
from policy.ope.evaluate import MIN_ESS
from policy.ope.targets import ServingParams


@dataclass(frozen=True)
class GateResult:
    passed: bool
    estimator: str
    margin: float
    difference: dict[str, float]
    candidate: dict[str, float]
    serving: dict[str, float]
    ess: float
    rows: int
    warnings: list[str]

    def line(self) -> str:
        d = self.difference
        verdict = "passes" if self.passed else "refused"
        return (f"candidate - serving ({self.estimator}): {d['value']:+.5f} [{d['lo']:+.5f}, {d['hi']:+.5f}] "
                f"on {self.rows:,} logged rows (candidate {self.candidate['value']:.5f}, serving "
                f"{self.serving['value']:.5f}, ESS {self.ess:,.0f}); lower bound "
                f"{'>' if d['lo'] > self.margin else '<='} margin {self.margin:+.5f}: {verdict}")


def gate_check(log: Path, candidate: Path, serving: Path, *, margin: float = 0.0, estimator: str = "snips",
               replay: bool = False, serving_params: ServingParams = ServingParams(),
               min_ess: float = MIN_ESS) -> GateResult:
    """Evaluate ``candidate`` against ``serving`` on ``log``; passed iff the paired lower bound > margin
    and both effective sample sizes are >= ``min_ess``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    mode = "@replay" if replay else ""
    report: dict[str, Any] = run_evaluation(log, [f"candidate={candidate}{mode}", f"serving={serving}{mode}"],
                                            serving=serving_params, reference="serving", min_ess=min_ess)
    diff = report["differences"]["candidate - serving"][estimator]
    warnings = [w for name in ("candidate", "serving") for w in report["diagnostics"][name]["warnings"]]
    ess = min(report["diagnostics"][n]["ess"] for n in ("candidate", "serving"))
    return GateResult(
        passed=bool(diff["lo"] > margin and ess >= min_ess), estimator=estimator, margin=margin, difference=diff,
        candidate=report["policies"]["candidate"][estimator], serving=report["policies"]["serving"][estimator],
        ess=ess, rows=report["n_rows"],
        warnings=warnings)
