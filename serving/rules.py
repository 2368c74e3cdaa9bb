"""Maintenance rules over predicted windows: which windows match, and which fault they name.

Pure functions on :mod:`serving.integration_types`; the consecutive-window counters and the
requests they open live in the state store (:meth:`observe_windows`). A window's *fault* is what
de-duplicates requests (one open request per tenant, asset and fault):

- the predicted class, when it is not ``normal``;
- else ``vibration_severity`` when the rule's ISO zone criterion matched;
- else ``anomaly`` when its anomaly-score criterion matched;
- else (a failure-probability threshold below 0.5, met by a window still called ``normal``) the
  most probable class other than ``normal``.

Examples
--------
>>> from serving.integration_types import RuleCondition, WindowObservation
>>> w = WindowObservation(0.0, 0.2, "normal", 0.1, "outer_race", iso_zone="D")
>>> window_fault(RuleCondition(iso_zones=frozenset({"C", "D"})), w)
'vibration_severity'
>>> window_fault(RuleCondition(failure_probability_gte=0.8), w) is None
True
"""

from __future__ import annotations

from serving.integration_types import Rule, RuleCondition, WindowObservation

NORMAL_CLASS = "normal"
SEVERITY_FAULT = "vibration_severity"
ANOMALY_FAULT = "anomaly"


def criteria(condition: RuleCondition, obs: WindowObservation) -> dict[str, bool]:
    """Each criterion the condition sets, and whether ``obs`` meets it."""
    checks: dict[str, bool] = {}
    if condition.failure_probability_gte is not None:
        checks["failure_probability"] = obs.failure_probability >= condition.failure_probability_gte
    if condition.iso_zones:
        checks["iso_zone"] = obs.iso_zone is not None and obs.iso_zone in condition.iso_zones
    if condition.anomaly_score_gte is not None:
        checks["anomaly_score"] = (
            obs.anomaly_score is not None and obs.anomaly_score >= condition.anomaly_score_gte
        )
    if condition.predicted_classes:
        checks["predicted_class"] = obs.predicted_class in condition.predicted_classes
    return checks


def window_fault(condition: RuleCondition, obs: WindowObservation) -> str | None:
    """The fault ``obs`` names under ``condition``, or None when it does not match."""
    checks = criteria(condition, obs)
    if not checks:
        return None
    matched = all(checks.values()) if condition.match == "all" else any(checks.values())
    if not matched:
        return None
    if obs.predicted_class != NORMAL_CLASS:
        return obs.predicted_class
    if checks.get("iso_zone"):
        return SEVERITY_FAULT
    if checks.get("anomaly_score"):
        return ANOMALY_FAULT
    return obs.top_fault


def in_scope(rule: Rule, asset_id: str, site: str) -> bool:
    """Whether ``rule`` watches the asset: its sites or asset ids name it, or it has neither."""
    if not rule.sites and not rule.asset_ids:
        return True
    return site in rule.sites or asset_id in rule.asset_ids
