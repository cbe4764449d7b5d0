"""The operate loop's judgments on log rows, its saved state and its lease."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from rayops.config import OperateConfig, RollbackConfig, ShadowGateConfig
from rayops.operate.signals import (
    Signals,
    decide,
    rollback_breach,
    served_stats,
    shadow_stats,
    shadow_verdict,
)
from rayops.operate.state import CycleState, Lease, OperateError, StateStore
from rayops.storage import resolve


def _signals(**changes) -> Signals:
    base = {
        "drift": "ok",
        "drift_streak": 0,
        "new_labels": 0,
        "live_metric": None,
        "cycles_since_retrain": 0,
    }
    return Signals(**(base | changes))


def test_each_signal_alone_retrains_and_none_does_not():
    cfg = OperateConfig(drift_windows=2, min_new_labels=500, min_live_metric=0.6, retrain_every=4)
    assert decide(cfg, "valid_f1", "max", _signals()) == []
    assert decide(cfg, "valid_f1", "max", _signals(drift="drift", drift_streak=1)) == []
    (why,) = decide(cfg, "valid_f1", "max", _signals(drift="drift", drift_streak=2))
    assert "drift in 2 consecutive" in why
    (why,) = decide(cfg, "valid_f1", "max", _signals(new_labels=500))
    assert "500 new labelled records" in why
    (why,) = decide(cfg, "valid_f1", "max", _signals(live_metric=0.55))
    assert "live_f1 0.5500 is below" in why
    assert decide(cfg, "valid_f1", "max", _signals(live_metric=0.65)) == []
    # a metric to minimize: above the bound retrains
    (why,) = decide(cfg, "valid_rmse", "min", _signals(live_metric=0.7))
    assert "above" in why
    (why,) = decide(cfg, "valid_f1", "max", _signals(cycles_since_retrain=3))
    assert why.startswith("scheduled")


def _log(rows: list[tuple]) -> pd.DataFrame:
    """Prediction-log rows: (request, index, version, role, prediction, error, latency)."""
    return pd.DataFrame(
        rows,
        columns=[
            "request_id",
            "record_index",
            "model_version",
            "role",
            "prediction",
            "error",
            "latency_ms",
        ],
    )


def _mirrored(n: int, shadow_answer, error=None, latency=5.0, champion_latency=4.0):
    rows = []
    for i in range(n):
        rows.append((f"r{i}", 0, "1", "champion", json.dumps("yes"), None, champion_latency))
        answer = shadow_answer(i)
        rows.append(
            (f"r{i}", 0, "2", "shadow", None if error else json.dumps(answer), error, latency)
        )
    return _log(rows)


def test_a_shadow_that_fails_on_every_request_is_not_promoted():
    stats = shadow_stats(
        _mirrored(300, lambda i: None, error="PredictionError: nan"), "2", "classification", 0.1
    )
    assert stats.shadow.records == 300 and stats.shadow.errors == 300
    passed, why = shadow_verdict(ShadowGateConfig(), stats)
    assert not passed and "failed on 100.0% of mirrored records" in why


def test_shadow_agreement_latency_and_too_little_traffic():
    cfg = ShadowGateConfig(min_records=100, min_agreement=0.8, max_p95_latency_ratio=2.0)
    agreeing = shadow_stats(
        _mirrored(200, lambda i: "yes" if i % 10 else "no"), "2", "classification", 0.1
    )
    assert agreeing.agreement == pytest.approx(0.9) and agreeing.compared == 200
    assert shadow_verdict(cfg, agreeing)[0]
    disagreeing = shadow_stats(
        _mirrored(200, lambda i: "no" if i % 2 else "yes"), "2", "classification", 0.1
    )
    passed, why = shadow_verdict(cfg, disagreeing)
    assert not passed and "agrees with the champion on 50.0%" in why
    slow = shadow_stats(_mirrored(200, lambda i: "yes", latency=50.0), "2", "classification", 0.1)
    passed, why = shadow_verdict(cfg, slow)
    assert not passed and "12.5x the champion's" in why
    passed, why = shadow_verdict(
        cfg, shadow_stats(_mirrored(20, lambda i: "yes"), "2", "classification", 0.1)
    )
    assert not passed and "saw 20 mirrored record(s), fewer than" in why


def test_regression_agreement_is_within_a_relative_tolerance():
    rows = _log(
        [
            ("a", 0, "1", "champion", "100.0", None, 1.0),
            ("a", 0, "2", "shadow", "109.0", None, 1.0),
            ("b", 0, "1", "champion", "100.0", None, 1.0),
            ("b", 0, "2", "shadow", "120.0", None, 1.0),
        ]
    )
    assert shadow_stats(rows, "2", "regression", 0.1).agreement == pytest.approx(0.5)


def test_rollback_on_errors_or_latency_once_enough_records_are_served():
    cfg = RollbackConfig(min_records=20, max_error_rate=0.02, max_p95_latency_ms=100)
    failing = _log([(f"r{i}", 0, "3", "champion", None, "nan", 2.0) for i in range(30)])
    breach = rollback_breach(cfg, served_stats(failing, "3", ("champion",)))
    assert breach is not None and "failed on 100.0% of served records" in breach
    few = _log([(f"r{i}", 0, "3", "champion", None, "nan", 2.0) for i in range(5)])
    assert rollback_breach(cfg, served_stats(few, "3", ("champion",))) is None
    slow = _log([(f"r{i}", 0, "3", "champion", '"yes"', None, 500.0) for i in range(30)])
    assert "p95 latency 500.0 ms" in rollback_breach(cfg, served_stats(slow, "3", ("champion",)))
    healthy = _log([(f"r{i}", 0, "3", "champion", '"yes"', None, 5.0) for i in range(30)])
    assert rollback_breach(cfg, served_stats(healthy, "3", ("champion",))) is None


def test_state_survives_a_restart(tmp_path):
    store = StateStore(resolve(str(tmp_path)))
    assert store.load().finished and store.load().cycle == 0
    state = CycleState(
        3,
        "shadow",
        "run-1",
        {"challenger": "5", "champion": "4"},
        2,
        0,
        "2026-11-27T10:00:00+00:00",
    )
    store.save(state)
    assert StateStore(resolve(str(tmp_path))).load() == state


def test_one_operator_per_pipeline_and_a_crashed_ones_lease_expires(tmp_path):
    folder = resolve(str(tmp_path))
    first, second = Lease(folder, lease_s=60), Lease(folder, lease_s=60)
    first.acquire()
    try:
        with pytest.raises(OperateError, match="another operator .* runs this pipeline"):
            second.acquire()
        assert first.held() and not second.held()
    finally:
        first.release()
    second.acquire()  # released: free at once
    second.release()
    # a crashed operator never releases (nor renews): the next one waits for it to expire
    crashed, successor = Lease(folder, lease_s=1.0), Lease(folder, lease_s=60)
    crashed.acquire()
    crashed._stop.set()  # its renewing thread dies with it
    started = time.monotonic()
    successor.acquire(wait_s=5)
    assert successor.held() and time.monotonic() - started >= 0.5
    assert not crashed.held()  # back from the dead, it must not promote
    successor.release()
    # only the newest few records are kept
    assert len((folder.join("lease")).list_dir()) <= Lease.KEEP + 1


def test_the_loop_says_what_it_needs_from_serve(tmp_path):
    from rayops.config import load_config
    from rayops.demo import config_path
    from rayops.errors import ConfigError
    from tests.helpers import demo_config

    def check_config(cfg):
        cfg.check_operate()

    with pytest.raises(ConfigError, match=r"needs serve.mirror_fraction > 0"):
        check_config(demo_config(tmp_path))  # tests serve without mirroring
    with pytest.raises(ConfigError, match=r"needs serve.mirror_fraction > 0"):
        check_config(demo_config(tmp_path, **{"serve.canary_fraction": 0.1}))
    check_config(demo_config(tmp_path, **{"serve.mirror_fraction": 0.01}))
    check_config(demo_config(tmp_path, **{"operate.shadow.enabled": "false"}))
    with pytest.raises(ConfigError, match="shadow_alias"):
        check_config(
            demo_config(
                tmp_path, **{"serve.mirror_fraction": 0.01, "serve.shadow_alias": "staging"}
            )
        )
    with pytest.raises(ConfigError, match="mirror_fraction 0.5 needs log_predictions"):
        demo_config(tmp_path, **{"serve.mirror_fraction": 0.5, "serve.log_predictions": "false"})
    # the shipped config: the README's `rayops deploy` then `rayops operate` run as written
    check_config(load_config(config_path()))


def test_canary_share_is_sticky_by_key_and_near_its_fraction():
    from rayops.serve.routing import in_share

    keys = [f"user-{i}" for i in range(4000)]
    first = [in_share(k, 0.25) for k in keys]
    assert first == [in_share(k, 0.25) for k in keys]  # the same key, the same side
    assert 0.22 < sum(first) / len(keys) < 0.28
    assert not any(in_share(k, 0.0) for k in keys[:100])
    assert all(in_share(k, 1.0) for k in keys[:100])


# --------------------------------------------------------------------------- the registry moves


def _registry(tmp_path, versions: int = 3):
    """A real MLflow registry (sqlite) holding ``versions`` versions of the demo's model:
    v1 champion, v2 a challenger that passed the gate (what a cycle in its shadow left)."""
    from rayops import tracking
    from tests.helpers import demo_config

    cfg = demo_config(tmp_path, **{"serve.mirror_fraction": 0.1, "operate.rollback.watch_s": 0})
    client = tracking.client(cfg.tracking)
    client.create_registered_model(cfg.model_name)
    for i in range(versions):
        client.create_model_version(cfg.model_name, source=f"file:///models/{i}")
        tracking.tag_version(
            cfg.tracking, cfg.model_name, str(i + 1), {tracking.PASSED_TAG: "true"}
        )
    tracking.promote(cfg.tracking, cfg.model_name, "1")
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHALLENGER, "2")
    return cfg


def _resumed_at(cfg, step: str, **facts):
    from rayops.operate import Operator
    from rayops.operate.state import now_iso

    state = CycleState(
        1, step, None, {"champion": "1", "challenger": "2", "shadow_started_at": now_iso(), **facts}
    )
    Operator(cfg).store.save(state)
    lines: list[str] = []
    return Operator(cfg, say=lines.append, poll_s=0.05).run(cycles=1), lines


def test_an_alias_moved_during_a_shadow_ends_the_cycle_instead_of_failing_every_resume(tmp_path):
    """Someone runs `rayops train` during the shadow: its model passes and becomes
    @challenger. The resumed cycle ends, nothing promoted, saying why; the next cycle is
    free to start (before, every restart failed its alias check again)."""
    from rayops import tracking

    cfg = _registry(tmp_path)
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHALLENGER, "3")
    final, lines = _resumed_at(cfg, "shadow")
    assert final.finished and lines[0] == "[cycle 1] resuming at step 'shadow'"
    assert final.facts["outcome"].startswith("v2 not promoted: @challenger is v3 since")
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == "1"
    # the champion moved instead (a person promoted v3): the promotion step ends the cycle
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHALLENGER, "2")
    tracking.promote(cfg.tracking, cfg.model_name, "3")
    final, _ = _resumed_at(cfg, "promote")
    assert "@champion moved to v3 since the gate" in final.facts["outcome"]
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == "3"


def test_an_operator_that_died_after_moving_the_alias_resumes_into_the_watch(tmp_path):
    from rayops import tracking

    cfg = _registry(tmp_path)
    tracking.promote(cfg.tracking, cfg.model_name, "2")  # moved; the state was not saved
    final, lines = _resumed_at(cfg, "promote")
    assert final.facts["outcome"] == "v2 promoted to champion"
    assert "[cycle 1] promote: v2 is champion already" in lines
    assert "promoted_at" in final.facts


def test_a_cycle_abandoned_by_hand_withdraws_its_challenger(tmp_path):
    from rayops import tracking
    from rayops.operate import Operator

    cfg = _registry(tmp_path)
    Operator(cfg).store.save(CycleState(1, "shadow", None, {"champion": "1", "challenger": "2"}))
    lines: list[str] = []
    state = Operator(cfg, say=lines.append).abandon()
    assert state.finished and Operator(cfg).store.load().finished
    assert state.facts["outcome"] == "abandoned by hand at step 'shadow'; v2 withdrawn"
    assert tracking.alias_or_none(cfg.tracking, cfg.model_name, "challenger") is None
    tags = tracking.client(cfg.tracking).get_model_version(cfg.model_name, "2").tags
    assert "abandoned" in tags[tracking.WITHDRAWN_TAG]
    # nothing left: says so (and needs none of what running the loop needs from serve)
    bare = cfg.with_overrides({"serve.mirror_fraction": 0})
    assert Operator(bare, say=lines.append).abandon().cycle == 1
    assert lines[-1] == "[cycle 1] finished already: nothing to abandon"


def test_a_rollback_withdraws_the_version_it_leaves(tmp_path):
    """After a rollback @challenger still named the rolled-back version, and replicas with a
    canary share kept serving it to users."""
    from rayops import tracking

    cfg = _registry(tmp_path)
    tracking.promote(cfg.tracking, cfg.model_name, "2")
    assert tracking.rollback(cfg.tracking, cfg.model_name) == "1"
    assert tracking.alias_or_none(cfg.tracking, cfg.model_name, "challenger") is None
    withdrawn = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert withdrawn.version == "1" and withdrawn.gated
    tags = tracking.client(cfg.tracking).get_model_version(cfg.model_name, "2").tags
    assert tags[tracking.WITHDRAWN_TAG].startswith("rolled back (@champion back to v1)")
