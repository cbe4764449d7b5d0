"""Forecasting end to end on generated hourly demand (6 zones, 5 weeks): the ingest
quarantines repeated and off-grid hours, training on Ray Train beats the seasonal-naive
forecast, the gate compares on valid_mae, and the registered model forecasts a day ahead
(and refuses what it cannot forecast, naming why)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayops.config import load_config
from rayops.data.ingest import file_source, ingest
from rayops.demo import config_path, demand
from rayops.errors import DataError
from rayops.forecast import forecast
from rayops.pipeline import train_and_register
from rayops.predict import Predictor
from tests.helpers import SHADOW_ON_FAILURES, fresh_tracking_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ZONES, WEEKS = 6, 5


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, serve_port):
    tmp = tmp_path_factory.mktemp("forecasting")
    fresh_tracking_store(tmp / "mlflow" / "mlflow.db")
    config = load_config(
        config_path("demand"),
        [
            f"storage.root={tmp / 'lake'}",
            f"tracking.uri=sqlite:///{tmp}/mlflow/mlflow.db",
            "data.forecast.validation=1w",
            "model.family=xgboost",
            "model.xgboost.max_rounds=150",
            "serve.access_log=false",
            f"serve.port={serve_port}",
            "serve.cpus_per_replica=0.1",
            "serve.mirror_fraction=1.0",
            "serve.model_poll_interval_s=0.5",
            "serve.log_flush_interval_s=0.5",
            "serve.autoscaling.min_replicas=1",
            "serve.autoscaling.max_replicas=1",
        ],
    )
    demand.write(demand.generate(zone_count=ZONES, weeks=WEEKS), file_source(config).location)
    return config


@pytest.fixture(scope="module")
def dataset(cfg):
    return ingest(cfg)


@pytest.fixture(scope="module")
def trained(cfg, dataset):
    return train_and_register(cfg, dataset, sweep=False)


@pytest.fixture(scope="module")
def url(cfg, trained):
    from rayops.serve import deploy

    return deploy(cfg)


def test_ingest_quarantines_repeated_and_off_grid_observations(dataset):
    rows, reasons = dataset.manifest.rows, dataset.manifest.quarantine_reasons
    assert reasons["ts: duplicate of an observation of the same series and step"] > 0
    assert reasons["ts: not on the 1h grid of steps"] > 0
    assert reasons["demand: not a finite number"] > 0
    assert rows.read == rows.train + rows.quarantine and rows.valid == 0  # held out by time
    observed = dataset.table("train").to_pandas()
    assert not observed.duplicated(["zone", "ts"]).any()
    assert len(observed) == rows.train
    quarantine = dataset.quarantine().to_pandas()
    repeated = quarantine[quarantine["reason"].str.contains("duplicate")]
    assert repeated["reason"].str.contains("zone=Z").all() and repeated["raw"].notna().all()
    layout = dataset.preprocessor.series["layout"]
    assert len(layout["levels"]) == ZONES
    assert pd.Timestamp(layout["validation_start"]) == observed["ts"].max() - pd.Timedelta(
        hours=167
    )


def test_examples_built_by_ray_data_match_those_built_here(dataset):
    pre = dataset.preprocessor
    here = pre.examples(dataset.table("train"), "valid")
    # one Ray Data task per group of series, as load_inputs builds a large dataset's
    there = pre.example_dataset(dataset.read("train"), "valid").to_pandas()
    assert len(there) == here.num_rows > 0
    keys = ["zone", "_ts"]
    np.testing.assert_allclose(
        pre.transform(pa.Table.from_pandas(there.sort_values(keys), preserve_index=False)),
        pre.transform(here.sort_by([(k, "ascending") for k in keys])),
    )


def test_the_forecaster_beats_the_seasonal_naive_forecast(trained):
    m = trained.metrics
    assert m["valid_mae"] < m["valid_naive_mae"], m
    assert m["valid_mase"] < 1.0, m
    assert 0.5 < m["valid_coverage_80"] < 0.97, m
    assert trained.decision.metric == "valid_mae" and trained.decision.promoted


def test_a_second_model_is_gated_on_valid_mae_against_the_champion(cfg, dataset, trained, tmp_path):
    from rayops import tracking
    from rayops.gate import register_and_gate
    from rayops.train.driver import log_bundle
    from tests.helpers import untrained_bundle

    mlp = cfg.with_overrides({"model.family": "mlp"})  # an untrained network of the same inputs
    run_id = tracking.start_run(mlp.tracking, mlp.experiment_name, f"{mlp.name}-train")
    uri = log_bundle(mlp, dataset, run_id, untrained_bundle(mlp, dataset, run_id, tmp_path), "mlp")
    d = register_and_gate(mlp, uri, run_id, dataset)
    assert d.metric == "valid_mae" and not d.promoted
    assert d.champion_score == pytest.approx(trained.metrics["valid_mae"], rel=1e-6)
    assert d.challenger_score > d.champion_score


def _history(cfg, dataset, zone: str) -> tuple[list[dict], list[dict], pd.DataFrame]:
    observed = dataset.table("train").to_pandas()
    series = observed[observed["zone"] == zone].sort_values("ts")
    past, ahead = series.iloc[:-24], series.iloc[-24:]
    history = [
        {"ts": t.isoformat(), "demand": int(d)}
        for t, d in zip(past["ts"], past["demand"], strict=True)
    ]
    future = [
        {"ts": t.isoformat(), "temp": float(x), "holiday": bool(h)}
        for t, x, h in zip(ahead["ts"], ahead["temp"], ahead["holiday"], strict=True)
    ]
    return history, future, ahead


def test_the_registered_model_forecasts_a_day_ahead(cfg, dataset, trained):
    from rayops import tracking

    model = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    predictor = Predictor.from_registry(cfg.tracking, model)
    history, future, ahead = _history(cfg, dataset, "Z01")
    answers = forecast(predictor, {"zone": "Z01"}, history, future)
    assert [a["ts"] for a in answers] == [f["ts"].replace("+00:00", "Z") for f in future]
    for a in answers:
        q = a["quantiles"]
        assert q["0.1"] <= q["0.5"] <= q["0.9"] and a["value"] == q["0.5"]
    error = np.mean(np.abs([a["value"] for a in answers] - ahead["demand"].to_numpy()))
    assert error < 0.5 * ahead["demand"].mean()
    with pytest.raises(DataError, match="unknown series zone='Q9'"):
        forecast(predictor, {"zone": "Q9"}, history, future)
    with pytest.raises(DataError, match="the model reads 168 steps of history"):
        forecast(predictor, {"zone": "Z01"}, history[-100:], future)
    with pytest.raises(DataError, match=r"future\[0\].ts: expected"):
        forecast(predictor, {"zone": "Z01"}, history, future[1:])


def test_checks_judge_forecast_steps_covariates_and_zones(cfg, dataset, trained):
    from rayops import tracking
    from rayops.checks import run_checks

    model = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    predictor = Predictor.from_registry(cfg.tracking, model)
    history, future, ahead = _history(cfg, dataset, "Z01")
    holiday = {
        "name": "a holiday lowers demand",
        "column": "holiday",
        "change": {"set": True},
        "expect": "down",
        "min_share": 0.5,
    }
    checked = cfg.with_overrides(
        {
            "checks": {
                "minimum": [
                    {
                        "name": "Z01's next day stays in range",
                        "expect_min": 0,
                        "expect_max": 5 * float(ahead["demand"].max()),
                        "records": [{"zone": "Z01", **r} for r in history + future],
                    }
                ],
                "directional": [
                    holiday,
                    {**holiday, "name": "a holiday raises demand (reversed)", "expect": "up"},
                ],
                "invariance": [
                    {
                        "name": "a degree of noise on temp moves nothing much",
                        "columns": ["temp"],
                        "perturb": "noise",
                        "scale": 0.01,
                        "tolerance": 5.0,
                    }
                ],
                "slices": [{"column": "zone", "metric": "valid_mase", "relative_floor": 0.25}],
            }
        }
    )
    found = {r.name: r for r in run_checks(checked, predictor, dataset, "forecaster").results}
    assert found["Z01's next day stays in range"].passed, found
    assert "24 of 24 forecast step(s)" in found["Z01's next day stays in range"].detail
    assert found["a holiday lowers demand"].passed, found["a holiday lowers demand"]
    reversed_ = found["a holiday raises demand (reversed)"]
    assert not reversed_.passed and "forecast step(s)" in reversed_.detail
    assert found["a degree of noise on temp moves nothing much"].passed
    zones = found["valid_mase by zone"]
    assert zones.passed and "Z01" in zones.detail, zones


def test_the_served_model_answers_forecasts_over_http(cfg, dataset, trained, url):
    import requests

    history, future, ahead = _history(cfg, dataset, "Z02")
    body = {"series": {"zone": "Z02"}, "history": history, "future": future}
    answer = requests.post(f"{url}/forecast", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model"]["version"] == str(trained.decision.champion.version)
    steps = result["forecast"]
    assert [s["ts"] for s in steps] == [f["ts"].replace("+00:00", "Z") for f in future]
    assert all(s["quantiles"]["0.1"] <= s["value"] <= s["quantiles"]["0.9"] for s in steps)
    # no history: the series' latest curated observations, which end where ``future`` starts
    # in this dataset only for the last day; send the day after the data instead
    last = pd.Timestamp(ahead["ts"].max())
    tomorrow = [
        {"ts": (last + pd.Timedelta(hours=h)).isoformat(), "temp": 10.0, "holiday": False}
        for h in range(1, 25)
    ]
    curated = requests.post(
        f"{url}/forecast", json={"series": {"zone": "Z02"}, "future": tomorrow}, timeout=60
    )
    assert curated.status_code == 200, curated.text
    assert len(curated.json()["forecast"]) == 24
    unknown = requests.post(
        f"{url}/forecast", json={"series": {"zone": "Q9"}, "future": tomorrow}, timeout=60
    )
    assert unknown.status_code == 422 and "unknown series zone='Q9'" in unknown.text

    def refused(change: dict) -> dict:
        response = requests.post(f"{url}/forecast", json={**body, **change}, timeout=60)
        assert response.status_code == 422, response.text
        return response.json()["detail"][0]

    assert "unknown series zone='Q9'" in refused({"series": {"zone": "Q9"}})["msg"]
    short = refused({"history": history[-30:]})
    assert short["loc"] == ["body", "history"] and "168 steps of history" in short["msg"]
    typo = refused({"future": [{**future[0], "temp": "warm"}]})
    assert typo["loc"][:4] == ["body", "future", 0, "temp"]
    too_far = refused({"future": future + future[:1]})
    assert too_far["loc"] == ["body", "future"]
    assert requests.post(f"{url}/predict", json={"records": [{}]}, timeout=30).status_code == 404


def _diverged(cfg, dataset, folder) -> str:
    """A forecaster whose weights are NaN, registered as a challenger that passed (as if
    its gate had not looked): every forecast it makes fails."""
    import torch

    from rayops import tracking
    from rayops.train.driver import log_bundle
    from tests.helpers import untrained_bundle

    mlp = cfg.with_overrides({"model.family": "mlp"})
    run_id = tracking.start_run(mlp.tracking, mlp.experiment_name, "diverged")
    predictor = Predictor.load(untrained_bundle(mlp, dataset, run_id, folder / "untrained"))
    with torch.no_grad():
        for weights in predictor.bundle.model.network.parameters():
            weights.fill_(float("nan"))
    uri = log_bundle(mlp, dataset, run_id, predictor.bundle.save(folder / "nan"), "mlp")
    tracking.end_run(mlp.tracking, run_id)
    version = tracking.register(cfg.tracking, cfg.model_name, uri, run_id).version
    tracking.tag_version(cfg.tracking, cfg.model_name, version, {tracking.PASSED_TAG: "true"})
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHALLENGER, version)
    return version


def test_served_forecasts_are_mirrored_logged_labelled_and_monitored(
    cfg, dataset, trained, url, tmp_path
):
    """Each served step is a record of the prediction log: the shadow's forecasts land
    beside it, a model that fails is answered for by the one before, actuals sent as
    feedback give live metrics, and the monitor compares the steps' inputs with the
    training data."""
    import datetime as dt

    import requests

    from rayops import tracking
    from rayops.monitor.feedback import live_metrics, prediction_table, read_frame
    from rayops.monitor.report import monitor_records, read_window
    from rayops.operate.proving import LOG_COLUMNS
    from rayops.operate.signals import shadow_stats
    from tests.helpers import wait_for

    since = dt.datetime.now(dt.UTC)
    champion = str(trained.decision.champion.version)
    broken = _diverged(cfg, dataset, tmp_path)

    def metadata() -> dict:
        return requests.get(f"{url}/metadata", timeout=10).json()

    wait_for(
        lambda: (metadata()["shadow"] or {}).get("model", {}).get("version") == broken,
        60,
        what="the diverged challenger loaded as the shadow",
    )
    history, future, ahead = _history(cfg, dataset, "Z02")
    body = {"series": {"zone": "Z02"}, "history": history, "future": future}
    served = requests.post(
        f"{url}/forecast", json=body, timeout=60, headers={"X-Request-ID": "fc-mirrored"}
    )
    assert served.status_code == 200, served.text
    assert served.json()["model"]["version"] == champion

    def log() -> pd.DataFrame:
        rows = read_frame(prediction_table(cfg), LOG_COLUMNS, since)
        return rows[rows["request_id"] == "fc-mirrored"]

    wait_for(lambda: len(log()) == 48, 60, what="the forecast's and the shadow's steps")
    stats = shadow_stats(log(), broken, "forecasting", 0.1)
    assert stats.shadow.records == stats.shadow.errors == 24

    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHAMPION, broken)  # it serves
    wait_for(lambda: metadata()["model"]["version"] == broken, 60, what="the swap")
    failed = requests.post(f"{url}/forecast", json=body, timeout=60)
    assert failed.status_code == 200 and failed.json()["model"]["version"] == champion
    assert failed.json()["forecast"] == served.json()["forecast"]
    assert metadata()["served"]["fallback_answers"] >= 1
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHAMPION, champion)
    wait_for(lambda: metadata()["model"]["version"] == champion, 60, what="the swap back")

    actual = ahead["demand"].to_numpy()
    labels = [
        {"request_id": "fc-mirrored", "record_index": i, "label": float(a)}
        for i, a in enumerate(actual)
    ]
    stored = requests.post(f"{url}/feedback", json={"labels": labels}, timeout=60)
    assert stored.status_code == 202 and stored.json()["accepted"] == 24
    live = live_metrics(cfg)[champion]
    values = np.array([s["value"] for s in served.json()["forecast"]])
    assert live["labelled"] == 24
    assert live["live_mae"] == pytest.approx(np.mean(np.abs(values - actual)), rel=1e-4)

    window = read_window(cfg, 1.0)
    assert len(window) >= 48  # the two forecasts; the shadow's failures are not served
    report = monitor_records(cfg, window, log=False)
    assert report.rejected == 0
    assert {f.name for f in report.report.features} == {"zone", "temp", "holiday", "prediction"}


def test_an_operate_cycle_retrains_on_the_actuals_shadows_and_promotes(cfg, dataset, trained, url):
    """One cycle of the loop on the forecaster: the actuals sent as feedback
    retrain it with a sweep ranked on valid_mae, the gate compares on valid_mae (the window
    gate does not apply), the new model forecasts in shadow beside the champion, then
    serves; under traffic from the shadow on, every request answered."""
    import threading
    import time
    from collections import Counter

    import requests

    from rayops import tracking
    from rayops.operate import Operator
    from tests.helpers import wait_for

    champion = str(trained.decision.champion.version)
    operated = cfg.with_overrides(
        {
            "model.xgboost.max_rounds": 300,  # more rounds than the champion's 150: it improves
            "operate.sweep": True,
            "tune.max_concurrent_trials": 2,  # a sweep, on valid_mae
            "tune.search_space": {"model.xgboost.max_depth": {"type": "choice", "values": [4, 6]}},
            "operate.min_new_labels": 20,
            "operate.shadow.min_records": 48,
            "operate.shadow.max_wait_s": 90,
            "operate.rollback.watch_s": 0,
            **SHADOW_ON_FAILURES,
        }
    )
    history, future, _ = _history(cfg, dataset, "Z02")
    body = {"series": {"zone": "Z02"}, "history": history, "future": future}
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(f"{url}/forecast", json=body, timeout=60)
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    versions[answer.json()["model"]["version"]] += 1
                time.sleep(0.1)

    sender = threading.Thread(target=traffic, daemon=True)
    lines: list[str] = []

    def say(line: str) -> None:  # traffic from the shadow on: training has the CPUs before
        lines.append(line)
        if "beside the champion" in line:
            sender.start()

    try:
        state = Operator(operated, say=say, poll_s=0.5).run(cycles=1)
        facts = state.facts
        challenger = facts.get("challenger")
        assert facts["outcome"] == f"v{challenger} promoted to champion", lines
        wait_for(lambda: versions[challenger] > 0, 60, what="the promoted version answering")
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(60)
    assert any("24 new labelled records" in r for r in facts["reasons"]), facts["reasons"]
    assert facts["champion"] == champion and facts["gate_passed"]
    assert facts["window_gate"].startswith("not applicable to forecasting")
    shadow = facts["shadow"]["shadow"]
    assert shadow["records"] >= 48 and shadow["errors"] == 0, facts["shadow"]
    assert set(statuses) == {200}, statuses
    client = tracking.client(cfg.tracking)
    best = client.get_run(facts["train_run_id"])
    trials = client.search_runs(
        [best.info.experiment_id],
        f"tags.mlflow.parentRunId = '{best.data.tags['mlflow.parentRunId']}'",
    )
    lowest = {
        t.info.run_id: min(m.value for m in client.get_metric_history(t.info.run_id, "valid_mae"))
        for t in trials
    }
    assert len(lowest) == 2 and lowest[best.info.run_id] == min(lowest.values())
    assert facts["challenger_score"] == pytest.approx(lowest[best.info.run_id], rel=1e-4)
