"""Both model families through the whole path: a sweep across families (regression) and an
XGBoost classifier, each registered, gated and answered by Ray Serve over HTTP; the served
model of the other family is swapped in without a restart. The MLP classifier's path is
in test_pipeline_local."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo.run import SAMPLE_RECORDS
from rayops.pipeline import train_and_register
from rayops.predict import Predictor
from tests.helpers import demo_config, majority_accuracy, wait_for, write_demo_data
from tests.integration.conftest import wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_TREES = {
    "model.xgboost.max_rounds": 200,
    "model.xgboost.learning_rate": 0.3,
    "model.xgboost.early_stopping_rounds": 5,
    "model.xgboost.report_every": 10,
}


@pytest.fixture(scope="module")
def regression(tmp_path_factory, ray_start_4_cpus, serve_port):
    """Total charges from the churn exports (tenure x monthly charges, with noise), swept
    across both families, one trial each."""
    tmp = tmp_path_factory.mktemp("regression")
    cfg = demo_config(
        tmp,
        **{
            "data.label": "total_charges",
            "data.task": "regression",
            "tracking.registered_model": "charges",
            "serve.port": serve_port,
            "serve.app_name": "charges",
            "serve.route_prefix": "/charges",
            "serve.model_poll_interval_s": 1,
            "tune.enabled": True,
            "tune.search": "grid",
            "train.num_workers": 1,  # two workers at once: the classifier's XGBoost below
            "tune.max_concurrent_trials": 2,
            "tune.scheduler.type": "fifo",
            "tune.search_space": {"model.family": {"type": "choice", "values": ["mlp", "xgboost"]}},
            **FAST_TREES,
        },
    )
    write_demo_data(file_source(cfg).location, rows=2000)
    version = ingest(cfg)
    return cfg, version, train_and_register(cfg, version)


def _served(cfg) -> str:
    from rayops.serve import deploy

    url = deploy(cfg)
    wait_http(f"{url}/health", 120)
    return url


# The regression's inputs: churned is a feature there, total charges the label.
CUSTOMERS = [
    {**{k: v for k, v in r.items() if k != "total_charges"}, "churned": churned}
    for r, churned in zip(SAMPLE_RECORDS, ("yes", "no"), strict=True)
]


def _answer(url: str, records: list[dict]) -> dict:
    response = requests.post(f"{url}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _values(predictions: list[dict]) -> list[float]:
    return [p["prediction"] for p in predictions]


def test_a_sweep_across_families_records_the_winner_and_both_serve_over_http(regression):
    cfg, _, result = regression
    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(client.get_run(result.run_id).data.tags["mlflow.parentRunId"])
    trials = tracking.trial_models(cfg.tracking, cfg.experiment_name, parent.info.run_id)
    family_of = {
        client.get_run(run_id).data.params["model.family"]: (run_id, uri)
        for run_id, uri in trials.values()
    }
    assert set(family_of) == {"mlp", "xgboost"}
    winner = client.get_run(result.run_id).data.params["model.family"]
    assert parent.data.params["best.model.family"] == winner
    assert family_of[winner][0] == result.run_id
    assert result.metrics["valid_r2"] > 0.8  # both families learn tenure x monthly charges

    # Early stopping ended the boosted trial, and its model holds the best round's trees.
    boosted = client.get_run(family_of["xgboost"][0]).data.metrics
    assert boosted["best_kept_rounds"] < boosted["best_epoch"] < 200

    url = _served(cfg)
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    body = _answer(url, CUSTOMERS)
    assert body["model"]["version"] == champion.version
    assert requests.get(f"{url}/metadata", timeout=10).json()["family"] == winner
    local = Predictor.from_registry(cfg.tracking, champion).predict_records(CUSTOMERS)
    assert _values(body["predictions"]) == pytest.approx(_values(local), rel=1e-5)
    short, long = _values(body["predictions"])
    assert short < 600 and 2000 < long < 4000  # 2 months at 99.5; 64 months at 45.2

    # The other family's model becomes champion: the replica swaps it in and answers.
    other = "xgboost" if winner == "mlp" else "mlp"
    run_id, uri = family_of[other]
    swapped = tracking.register(cfg.tracking, cfg.model_name, uri, run_id, alias=tracking.CHAMPION)
    wait_for(
        lambda: requests.get(f"{url}/metadata", timeout=10).json()["family"] == other,
        60,
        what=f"the {other} model served",
    )
    body = _answer(url, CUSTOMERS)
    assert body["model"]["version"] == swapped.version
    local = Predictor.from_registry(cfg.tracking, swapped).predict_records(CUSTOMERS)
    assert _values(body["predictions"]) == pytest.approx(_values(local), rel=1e-5)
    if other == "xgboost":
        assert (
            Predictor.from_registry(cfg.tracking, swapped).bundle.model.booster.num_boosted_rounds()
            == boosted["best_kept_rounds"]
        )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, regression, serve_port):
    """An XGBoost churn classifier, the champion of its registered model."""
    tmp = tmp_path_factory.mktemp("classifier")
    cfg = demo_config(
        tmp,
        **{
            "model.family": "xgboost",
            "serve.port": serve_port,
            "serve.app_name": "churn",
            "serve.route_prefix": "/churn",
            **FAST_TREES,
        },
    )
    write_demo_data(file_source(cfg).location, rows=2000)
    version = ingest(cfg)
    return cfg, version, train_and_register(cfg, version, sweep=False)


def test_an_xgboost_classifier_is_gated_and_served(classifier):
    cfg, version, result = classifier
    assert result.decision.promoted
    assert result.metrics["valid_accuracy"] > majority_accuracy(version) + 0.02
    url = _served(cfg)
    body = _answer(url, SAMPLE_RECORDS)
    assert requests.get(f"{url}/metadata", timeout=10).json()["family"] == "xgboost"
    risky, loyal = body["predictions"]
    assert risky["probabilities"]["yes"] > loyal["probabilities"]["yes"]
    assert sum(risky["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert loyal["prediction"] == "no"
    # The registered model loads as an MLflow pyfunc (no rayops server) and agrees.
    tracking.client(cfg.tracking)  # points MLflow's registry at this test's store
    frame = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion").predict(
        pd.DataFrame(SAMPLE_RECORDS)
    )
    assert list(frame["prediction"]) == [p["prediction"] for p in body["predictions"]]
    assert frame["probability_yes"].tolist() == pytest.approx(
        [p["probabilities"]["yes"] for p in body["predictions"]], abs=1e-5
    )


PLUGIN = "tests.integration.centroid_family"


def test_a_family_registered_by_a_plugin_is_trained_gated_and_served(classifier):
    """A family rayops has never heard of (it lives in this test suite) trains on Ray
    Train, is gated against the XGBoost champion on the same rows, and is served."""
    cfg, version, _ = classifier
    mine = cfg.with_overrides(
        {
            "model.family": "centroid",
            "model.plugins": [PLUGIN],
            "train.num_workers": 2,
            "serve.model_alias": "centroid",
            "serve.app_name": "centroid",
            "serve.route_prefix": "/centroid",
        }
    )
    result = train_and_register(mine, version, sweep=False)
    decision = result.decision
    assert 0.0 < result.metrics["valid_accuracy"] <= 1.0
    assert decision.champion_score is not None  # scored beside the champion, same rows
    assert decision.metric == "valid_f1" and decision.reason
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert champion.version == decision.champion.version
    tracking.set_alias(cfg.tracking, cfg.model_name, "centroid", decision.challenger.version)

    url = _served(mine)
    assert requests.get(f"{url}/metadata", timeout=10).json()["family"] == "centroid"
    body = _answer(url, SAMPLE_RECORDS)
    assert body["model"]["version"] == decision.challenger.version
    risky, loyal = body["predictions"]
    assert sum(risky["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    local = Predictor.from_registry(cfg.tracking, decision.challenger)
    assert [p["prediction"] for p in body["predictions"]] == [
        p["prediction"] for p in local.predict_records(SAMPLE_RECORDS)
    ]
    assert risky["probabilities"]["yes"] > loyal["probabilities"]["yes"]
