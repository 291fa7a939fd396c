"""The promotion gate: does a freshly trained model replace what serving publishes?

A model is promoted only when, on the test dates (regular-hours samples, as served, see
:mod:`training.evaluate`), all of these hold; the first that fails is the refusal's reason:

1. its served 80% interval score beats the calibrated window-vol baseline's and, when the report scored it,
   the HAR-style baseline's with online calibration (:mod:`minutecast.har`; strictly lower, both);
2. its 80% and 90% intervals cover within +-:data:`COVERAGE_TOL` of 0.80 and 0.90;
3. its point forecast (the median) is not significantly worse than persistence: refused only when its
   RMSE is higher *and* the one-sided Diebold-Mariano p-value (H1: model's squared errors larger) is
   below :data:`DM_ALPHA`;
4. when a current model exists, its served 80% interval score is not worse than the current's.

Until a model passes, serving keeps persistence with the calibrated baseline interval.
"""

from __future__ import annotations

import logging
from typing import Any

from minutecast.errors import ModelError
from minutecast.registry import Registry
from minutecast.serving_model import ServingModel

log = logging.getLogger(__name__)
COVERAGE_TOL = 0.02  # allowed |coverage - nominal| of the 80% and 90% intervals
DM_ALPHA = 0.05  # one-sided size of the Diebold-Mariano test of "model's point errors are worse"


def gate(report: dict[str, Any]) -> tuple[bool, str]:
    """(passed, reason) for the report of :func:`training.evaluate.build_report`; see the module docstring."""
    if report.get("served") != "model" or report.get("interval_score_80") is None:
        return False, "no model forecasts on the test samples"
    score, base = report["interval_score_80"], report.get("baseline_interval_score_80")
    if base is None:
        return False, "no calibrated-baseline interval score to compare with"
    if not score < base:
        return False, (f"80% interval score {score:.3f} bps does not beat the calibrated baseline's "
                       f"{base:.3f} bps")
    har = report.get("har_interval_score_80")
    if har is not None and not score < har:
        return False, f"80% interval score {score:.3f} bps does not beat the HAR baseline's {har:.3f} bps"
    for level in (80, 90):
        cov = report.get(f"coverage_{level}")
        if cov is None or abs(cov - level / 100) > COVERAGE_TOL:
            return False, (f"{level}% interval coverage {cov if cov is None else f'{cov:.4f}'} is outside "
                           f"{level / 100:.2f} +- {COVERAGE_TOL:.2f}")
    rmse, pers, p_worse = report.get("model_rmse"), report.get("persistence_rmse"), report.get("dm_pvalue_worse")
    if rmse is None or pers is None:
        return False, "no point RMSE of the model or persistence"
    if rmse > pers and (p_worse is None or p_worse < DM_ALPHA):
        return False, (f"point RMSE {rmse:.6f} is significantly worse than persistence {pers:.6f} "
                       f"(Diebold-Mariano one-sided p = {p_worse if p_worse is None else f'{p_worse:.3g}'} "
                       f"< {DM_ALPHA})")
    cur = report.get("current_interval_score_80")
    if cur is not None and score > cur:
        return False, (f"80% interval score {score:.3f} bps is worse than current "
                       f"{report.get('current_version')}'s {cur:.3f} bps")
    dm = report.get("dm_pvalue")
    beats_har = f" and HAR {har:.3f} bps" if har is not None else ""
    return True, (f"80% interval score {score:.3f} bps < calibrated baseline {base:.3f} bps{beats_har}; coverage "
                  f"{report['coverage_80']:.4f} / {report['coverage_90']:.4f}; RMSE {rmse:.6f} vs persistence "
                  f"{pers:.6f} (DM p = {dm if dm is None else f'{dm:.3g}'})"
                  + (f"; not worse than current {cur:.3f} bps" if cur is not None else "; no current model"))


def apply_gate(registry: Registry, version: str, report: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`gate`; promote ``version`` when it passes. Returns the decision (also put in the report)."""
    passed, reason = gate(report)
    if passed:
        registry.promote(version)
        log.info("promoted %s: %s", version, reason)
    else:
        log.warning("not promoting %s: %s", version, reason)
    decision = {"passed": passed, "reason": reason, "promoted": passed, "version": version}
    report["gate"] = decision
    return decision


def load_current(registry: Registry) -> ServingModel | None:
    """The current model, or None when there is none or it no longer loads (logged)."""
    version = registry.current_version()
    if version is None:
        return None
    try:
        return registry.load(version)
    except ModelError as exc:  # a broken current model must not block a fresh one
        log.warning("current model %s does not load (%s): gating against the baselines only", version, exc)
        return None
