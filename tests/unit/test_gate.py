"""The gate's thresholds on two sets of validation metrics (pure: no registry)."""

import pytest

from rayops.config import validate_config
from rayops.gate import verdict
from tests.unit.test_config import _raw

CHAMPION = {"valid_f1": 0.70, "valid_recall": 0.80, "valid_loss": 0.50}


def _cfg(**gate):
    return validate_config(_raw() | {"gate": gate})


@pytest.mark.parametrize(
    ("gate", "f1", "promoted", "why"),
    [
        ({}, 0.7001, True, "improved by +0.0001"),
        ({}, 0.70, False, "valid_f1 did not improve (+0.0000)"),
        ({}, 0.69, False, "valid_f1 did not improve (-0.0100)"),
        ({"min_improvement": 0.02}, 0.715, False, "improved by +0.0150, needs at least 0.0200"),
        ({"min_improvement": 0.02}, 0.73, True, "improved by +0.0300"),
        ({"min_relative_improvement": 0.05}, 0.73, False, "at least 0.0350"),
        ({"min_relative_improvement": 0.05}, 0.74, True, "improved"),
    ],
)
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


# --------------------------------------------------------------------------- with a registry

import pyarrow as pa  # noqa: E402


class _Version:
    """The dataset version a gate scores on: its id and validation rows (typed)."""

    def __init__(self, rows: pa.Table) -> None:
        self.id, self.rows = "churn/v000001", rows

    def scored_rows(self) -> pa.Table:
        return self.rows


@pytest.fixture(scope="module")
def churn():
    """Typed churn rows and the preprocessing fitted on them (no Ray, no training)."""
    import pyarrow.compute as pc

    from rayops.config import load_config
    from rayops.data.preprocess import fit
    from rayops.data.stats import table_stats
    from rayops.data.validate import ERROR, validate_frame
    from rayops.demo import churn as demo
    from rayops.demo import config_path

    cfg = load_config(config_path())
    used = [*cfg.data.feature_names, cfg.data.label]
    columns = {n: cfg.data.columns[n] for n in used}
    raw = demo.generate(600, 3).map(lambda v: "" if v is None or v != v else str(v))
    typed = validate_frame(raw, columns, cfg.data.label)
    typed = typed.filter(pc.is_null(typed.column(ERROR))).drop_columns([ERROR])
    pre = fit(table_stats(typed, columns, cfg.data.label, cfg.data.task), cfg.data)
    narrow = cfg.data.model_copy(update={"exclude": [*cfg.data.exclude, "region"]})
    fewer = {n: s for n, s in columns.items() if n != "region"}
    without_region = fit(
        table_stats(typed.drop_columns(["region"]), fewer, cfg.data.label, cfg.data.task), narrow
    )
    return columns, typed, pre, without_region


def _logged(
    cfg, churn, tmp_path, seed: int = 0, schema_changes=None, drop=(), classes=None
) -> tuple:
    """An MLP bundle with seeded weights logged to the config's MLflow store: (uri, run);
    ``classes``: a classifier that knows these classes instead."""
    import pandas as pd
    import torch

    from rayops import tracking
    from rayops.data.preprocess import Preprocessor
    from rayops.models import MLP, Bundle, MLPModel

    columns, typed, pre, without_region = churn
    pre = without_region if "region" in drop else pre
    if classes is not None:
        state = pre.to_dict()
        pre = Preprocessor.from_dict(
            {**state, "label_state": {"classes": classes, "counts": dict.fromkeys(classes, 1)}}
        )
    schema = {n: s.model_dump() for n, s in columns.items() if n not in drop}
    for name, change in (schema_changes or {}).items():
        schema[name] = {**schema[name], **change}
    torch.manual_seed(seed)
    model = MLPModel(MLP(pre.n_features, pre.n_outputs, [8]))
    meta = {
        "architecture": {
            "n_inputs": pre.n_features,
            "n_outputs": pre.n_outputs,
            "hidden_sizes": [8],
        },
        "preprocessor": pre.to_dict(),
        "schema": schema,
    }
    folder = Bundle(model, meta).save(
        tmp_path / f"bundle-{seed}-{len(schema_changes or {})}-{len(drop)}-{pre.n_outputs}"
    )
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, "test")
    example = pd.DataFrame(typed.slice(0, 1).to_pylist())
    uri = tracking.log_model(
        cfg.tracking, run_id, folder, example, {n: False for n in schema if n != cfg.data.label}
    )
    tracking.end_run(cfg.tracking, run_id)
    return uri, run_id


def test_a_refused_challenger_never_becomes_challenger(tmp_path, churn):
    """A refused model used to keep @challenger (set when it was registered), so a replica
    with a canary share served it to real users."""
    from rayops import tracking
    from rayops.gate import register_and_gate
    from tests.helpers import demo_config

    cfg = demo_config(tmp_path)
    version = _Version(churn[1])
    first = register_and_gate(cfg, *_logged(cfg, churn, tmp_path, seed=0), version)
    assert first.promoted and first.passed
    same = register_and_gate(cfg, *_logged(cfg, churn, tmp_path, seed=0), version)
    assert not same.passed and "did not improve (+0.0000)" in same.reason
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "challenger").version == "1"
    refused = tracking.client(cfg.tracking).get_model_version(cfg.model_name, "2")
    assert refused.tags[tracking.PASSED_TAG] == "false"
    assert refused.tags[tracking.DATASET_TAG] == version.id


def test_models_of_slightly_other_schemas_are_scored_on_the_same_rows(tmp_path, churn):
    """A widened max, another nullability, one more category: both models still read the
    rows, so the gate scores both (it used to promote the challenger unscored)."""
    from rayops.gate import register_and_gate
    from tests.helpers import demo_config

    cfg = demo_config(tmp_path)
    version = _Version(churn[1])
    register_and_gate(cfg, *_logged(cfg, churn, tmp_path, seed=0), version)
    widened = {
        "monthly_charges": {"max": 10_000.0},
        "region": {"nullable": False},
        "contract": {"values": ["month-to-month", "one-year", "two-year", "weekly"]},
    }
    decision = register_and_gate(
        cfg, *_logged(cfg, churn, tmp_path, seed=0, schema_changes=widened), version
    )
    assert decision.champion_score is not None
    assert decision.champion_score == pytest.approx(decision.challenger_score)
    assert not decision.promoted and "did not improve" in decision.reason
    # a feature the champion reads is gone from the rows: truly not comparable
    narrower = _Version(churn[1].drop_columns(["region"]))
    decision = register_and_gate(
        cfg, *_logged(cfg, churn, tmp_path, seed=1, drop=("region",)), narrower
    )
    assert decision.promoted and decision.champion_score is None
    assert "champion reads feature(s) ['region'], which the validation rows lack" in decision.reason


def test_classifiers_that_know_other_classes_are_scored_on_the_rows_both_know(tmp_path, churn):
    """A new class ("paused") appears in the labels: the challenger knows it, the champion
    never saw it. Both are scored on the rows whose class both know, not the champion on
    fewer rows than the challenger."""
    import pyarrow.compute as pc

    from rayops.gate import register_and_gate
    from tests.helpers import demo_config

    cfg = demo_config(tmp_path)
    rows = churn[1]
    label = rows.column("churned")
    paused = pa.array([i % 10 == 0 for i in range(rows.num_rows)])
    rows = rows.set_column(
        rows.schema.get_field_index("churned"), "churned", pc.if_else(paused, "paused", label)
    )
    version = _Version(rows)
    register_and_gate(cfg, *_logged(cfg, churn, tmp_path, seed=0), version)
    decision = register_and_gate(
        cfg, *_logged(cfg, churn, tmp_path, seed=0, classes=["no", "paused", "yes"]), version
    )
    assert decision.champion_score is not None
    kept = rows.num_rows - sum(paused.to_pylist())
    assert (
        f"on the {kept} of {rows.num_rows} validation rows whose class both models know"
        in decision.reason
    )
