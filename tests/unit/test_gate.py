"""The gate's thresholds on two sets of validation metrics (pure: no registry)."""

import pytest

from rayops.config import validate_config
from rayops.gate import verdict
from tests.unit.test_config import _raw

CHAMPION = {"valid_f1": 0.70, "valid_recall": 0.80, "valid_loss": 0.50}


def _cfg(**gate):
    return validate_config(_raw() | {"gate": gate})


@pytest.mark.parametrize(("gate", "f1", "promoted", "why"), [
    ({}, 0.7001, True, "improved by +0.0001"),
    ({}, 0.70, False, "needs more than 0"),
    ({"min_improvement": 0.02}, 0.715, False, "at least 0.0200"),
    ({"min_improvement": 0.02}, 0.73, True, "improved by +0.0300"),
    ({"min_relative_improvement": 0.05}, 0.73, False, "at least 0.0350"),
    ({"min_relative_improvement": 0.05}, 0.74, True, "improved"),
])
def test_the_target_metric_must_improve_by_the_margins(gate, f1, promoted, why):
    ok, reason = verdict(_cfg(**gate), {**CHAMPION, "valid_f1": f1}, CHAMPION)
    assert ok is promoted and why in reason


def test_other_metrics_may_not_regress_beyond_their_allowance():
    cfg = _cfg(max_regression={"valid_recall": 0.05, "valid_loss": 0.1})
    better_f1 = {**CHAMPION, "valid_f1": 0.75}
    assert verdict(cfg, {**better_f1, "valid_recall": 0.76}, CHAMPION)[0] is True
    ok, reason = verdict(cfg, {**better_f1, "valid_recall": 0.74}, CHAMPION)
    assert not ok and "valid_recall worsened by 0.0600" in reason
    ok, reason = verdict(cfg, {**better_f1, "valid_loss": 0.65}, CHAMPION)  # loss: lower wins
    assert not ok and "valid_loss worsened by 0.1500" in reason


def test_a_lower_is_better_gate_metric():
    cfg = _cfg(metric="valid_loss", min_improvement=0.05)
    assert verdict(cfg, {**CHAMPION, "valid_loss": 0.44}, CHAMPION)[0] is True
    assert verdict(cfg, {**CHAMPION, "valid_loss": 0.47}, CHAMPION)[0] is False
