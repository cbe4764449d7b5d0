"""Ray Serve over real HTTP: batching, autoscaling, backpressure, bad input, zero-downtime
promotion, a killed replica, the bearer token, metrics, the client, and an OpenAPI fuzz."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo.run import SAMPLE_RECORDS
from rayops.pipeline import train_and_register
from rayops.serve import deploy, wait_ready
from tests.helpers import demo_config, wait_for, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "rayops"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, serve_port):
    """Two registered versions of one model: v1 champion, v2 registered beside it (the same
    trained model registered again: what differs between them here is the version)."""
    tmp = tmp_path_factory.mktemp("serve")
    cfg = demo_config(
        tmp,
        **{
            "train.epochs": 2,
            "train.num_workers": 1,
            "serve.port": serve_port,
            "serve.cpus_per_replica": 0.1,
            "serve.model_poll_interval_s": 0.5,
        },
    )
    write_demo_data(file_source(cfg).location, rows=2000, files=1)
    version = ingest(cfg)
    first = train_and_register(cfg, version)
    second = tracking.register(
        cfg.tracking, cfg.model_name, first.decision.challenger.source, first.run_id, version.id
    )
    assert first.decision.promoted
    return cfg, first.decision.challenger.version, second.version


_running: dict[str, str] = {}  # the settings of the deployment running now -> its URL


def _deploy(cfg, **overrides) -> str:
    """The app deployed with ``overrides``: tests with the same settings (next to each other
    in this file) share one deployment; other settings replace it."""
    key = json.dumps(overrides, sort_keys=True, default=str)
    if key not in _running:
        _running.clear()
        _running[key] = deploy(cfg.with_overrides(overrides))
    wait_ready(_running[key])
    return _running[key]


def _deployment_gone() -> None:
    """After a test deletes the app or kills its replicas: the next test deploys anew."""
    _running.clear()


def _post(url: str, records=SAMPLE_RECORDS, **kwargs) -> requests.Response:
    return requests.post(f"{url}/predict", json={"records": records}, timeout=30, **kwargs)


def _replicas(name: str) -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments[name]
    return deployment.replica_states.get("RUNNING", 0)


class Load:
    """Concurrent clients posting until stopped; records status codes and model versions."""

    def __init__(self, url: str, clients: int, records=SAMPLE_RECORDS) -> None:
        self.url, self.clients, self.records = url, clients, records
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = session.post(
                    f"{self.url}/predict", json={"records": self.records}, timeout=30
                )
            except requests.RequestException:
                self.statuses[-1] += 1
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.versions[response.json()["model"]["version"]] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


# One replica that batches: the next two tests share it.
ONE_REPLICA = {
    "serve.max_batch_size": 16,
    "serve.batch_wait_timeout_s": 0.05,
    "serve.autoscaling.min_replicas": 1,
    "serve.autoscaling.max_replicas": 1,
}


def test_batching_forms_batches_larger_than_one(trained):
    cfg, _, _ = trained
    url = _deploy(cfg, **ONE_REPLICA)
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda _: _post(url), range(64)))
    assert [r.status_code for r in responses] == [200] * 64
    served = requests.get(f"{url}/metadata", timeout=10).json()["served"]
    assert served["largest_batch"] > 1 and served["batches"] < served["requests"]
    # 32 clients on one replica: most requests find company (each counted in once it
    # arrives, whatever order the ingress hands them over in)
    assert served["batched_requests"] >= 32, served


@pytest.fixture(scope="module")
def other_inputs(trained, tmp_path_factory):
    """A version of the same model that reads no `region` column: v1's bundle with
    `region` left out of its input schema, logged and registered beside it (replicas
    compare inputs before they serve a version; the gate's view of such a model, "not
    comparable", is tests/unit/test_gate.py's)."""
    import pandas as pd

    from rayops.models import BUNDLE

    cfg, first, _ = trained
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert champion.version == first
    bundle = tracking.download_bundle(cfg.tracking, champion, tmp_path_factory.mktemp("narrow"))
    meta = json.loads((bundle / BUNDLE).read_text())
    del meta["schema"]["region"]
    (bundle / BUNDLE).write_text(json.dumps(meta))
    example = pd.DataFrame([{k: v for k, v in SAMPLE_RECORDS[0].items() if k != "region"}])
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, f"{cfg.name}-no-region")
    uri = tracking.log_model(
        cfg.tracking, run_id, bundle, example, dict.fromkeys(example.columns, False)
    )
    tracking.end_run(cfg.tracking, run_id)
    return tracking.register(cfg.tracking, cfg.model_name, uri, run_id).version


def test_a_version_with_other_inputs_is_refused_once_and_reported(trained, other_inputs):
    import tempfile
    from pathlib import Path

    cfg, first, _ = trained
    url = _deploy(cfg, **ONE_REPLICA)  # the batching test's deployment

    def health() -> dict:
        return requests.get(f"{url}/health", timeout=10).json()

    try:
        tracking.promote(cfg.tracking, cfg.model_name, other_inputs)
        wait_for(lambda: health()["status"] == "degraded", what="the refusal in /health")
        time.sleep(2)  # four more polls of the alias
        state = health()["alias"]
        assert state["target_version"] == other_inputs and state["served_version"] == first
        assert state["not_served"] == {other_inputs: "refused: see /metadata"}  # open route
        metadata = requests.get(f"{url}/metadata", timeout=10).json()
        assert metadata["served"]["model_downloads"] == 2  # the first, and one try of this one
        assert "expects other inputs" in metadata["alias_state"]["not_served"][other_inputs]
        assert _post(url).json()["model"]["version"] == first  # still answering
        assert not list(Path(tempfile.gettempdir()).glob("rayops-model-*"))
    finally:
        tracking.promote(cfg.tracking, cfg.model_name, first)
    wait_for(lambda: health()["status"] == "ok", what="a healthy replica again")


# Serve still compares the look-back with its deprecated metrics_interval_s (10 s); the
# interval that counts is the push interval the test session sets (tests/conftest.py).
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_autoscaling_goes_up_under_load_and_back_down(trained):
    cfg, _, _ = trained
    name = f"{cfg.name}-model"
    url = _deploy(
        cfg,
        **{
            "serve.autoscaling.min_replicas": 1,
            "serve.autoscaling.max_replicas": 2,
            "serve.autoscaling.target_ongoing_requests": 1,
            "serve.autoscaling.upscale_delay_s": 0.5,
            "serve.autoscaling.downscale_delay_s": 2,
            "serve.autoscaling.look_back_period_s": 2,
            "serve.batch_wait_timeout_s": 0.02,
        },
    )
    wait_for(lambda: _replicas(name) == 1)
    with Load(url, clients=8) as load:
        wait_for(lambda: _replicas(name) == 2)
    assert set(load.statuses) == {200}
    wait_for(lambda: _replicas(name) == 1)


def test_overload_is_refused_fast_and_the_service_stays_healthy(trained):
    cfg, _, _ = trained
    url = _deploy(
        cfg,
        **{
            "serve.max_ongoing_requests": 1,
            "serve.max_batch_size": 1,
            "serve.max_queued_requests": 1,
            "serve.batch_wait_timeout_s": 0.0,
            "serve.autoscaling.min_replicas": 1,
            "serve.autoscaling.max_replicas": 1,
        },
    )
    big = SAMPLE_RECORDS * 500  # 1000 records: each request takes a while

    def timed(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = _post(url, big)
        return response.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(timed, range(40)))
    refused = [seconds for status, seconds in results if status == 503]
    assert refused, Counter(s for s, _ in results)
    assert {s for s, _ in results} <= {200, 503}
    assert max(refused) < 5.0
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    assert _post(url).status_code == 200


# ------------------------------------------------- the default settings, one deployment


@pytest.mark.parametrize(
    ("records", "status", "field"),
    [
        ([{**SAMPLE_RECORDS[0], "age": "old"}], 422, "age"),
        ([{**SAMPLE_RECORDS[0], "age": 300}], 422, "age"),
        ([{**SAMPLE_RECORDS[0], "surprise": 1}], 422, "surprise"),
        ([{k: v for k, v in SAMPLE_RECORDS[0].items() if k != "contract"}], 422, "contract"),
        ([{**SAMPLE_RECORDS[0], "paperless_billing": "yes"}], 422, "paperless_billing"),
        (SAMPLE_RECORDS * 600, 422, None),  # over max_records_per_request (1000)
    ],
)
def test_bad_input_gets_4xx_naming_the_field(trained, records, status, field):
    response = _post(_deploy(trained[0]), records)
    assert response.status_code == status
    if field:
        assert any(d["loc"][-1] == field for d in response.json()["detail"])


def test_metrics_and_the_predict_client(trained, tmp_path, capsys):
    import ray
    from typer.testing import CliRunner

    from rayops.cli import app, main

    cfg, _, _ = trained
    url = _deploy(cfg)
    # as the raw exports have them: an id, the label, yes/no booleans, NA for a null
    header = (
        "customer_id,age,tenure_months,monthly_charges,total_charges,contract,"
        "internet_service,payment_method,support_calls,paperless_billing,region,churned\n"
    )
    records = tmp_path / "records.csv"
    records.write_text(
        header + "C1,29,2,99.5,199.0,month-to-month,fiber,electronic_check,4,yes,north,yes\n"
        "C2,58,64,45.2,2893.0,two-year,dsl,credit_card,0,no,NA,no\n"
    )
    # Written to a file: Ray forwards replica logs to this process's stdout at any moment.
    out = tmp_path / "predictions.jsonl"
    result = CliRunner().invoke(app, ["predict", str(records), "--url", url, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 predictions" in result.output
    assert "not sent: churned, customer_id (not inputs of the served model)" in result.output
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(a["probabilities"]) for a in answers] == [["no", "yes"]] * 2
    assert all(a["prediction"] in ("no", "yes") for a in answers)
    assert [a["record_index"] for a in answers] == [0, 1] and answers[0]["request_id"]
    # a value the model refuses: the field, the value and the record, in one line
    records.write_text(header + "C3,29,2,99.5,199.0,monthly,fiber,cash,4,maybe,north,no\n")
    with pytest.raises(SystemExit) as ended:
        main(["predict", str(records), "--url", url])
    err = capsys.readouterr().err
    assert ended.value.code == 2
    assert "HTTP 422: record 0 contract: Input should be" in err
    assert "(got 'monthly'); record 0 paperless_billing" in err
    port = ray._private.worker.global_worker.node.metrics_export_port

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return "rayops_requests" in text and "rayops_batch_size" in text

    wait_for(exported, timeout_s=60)


def test_the_ingress_is_haproxy_listening_on_loopback_only(trained, ray_start_4_cpus):
    """Serve's ingress on a cluster rayops starts: HAProxy answers the API's port, and it,
    its stats page, its metrics and the replicas' own servers listen on 127.0.0.1 only."""
    import psutil

    cfg, _, _ = trained
    ingress = ray_start_4_cpus
    assert ingress, "HAProxy is the ingress of a cluster rayops starts on Linux"
    url = _deploy(cfg)
    assert _post(url).status_code == 200
    folder = os.path.dirname(ingress["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]) + "/"
    ours = [  # Ray puts the config in {folder}/{node id}/
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "haproxy"
        and any(arg.startswith(folder) for arg in p.info["cmdline"] or [])
    ]
    assert ours, "no HAProxy runs this cluster's config"
    listening = {
        c.laddr
        for p in ours
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    ports = {
        cfg.serve.port,
        int(ingress["RAY_SERVE_HAPROXY_STATS_PORT"]),
        int(ingress["RAY_SERVE_HAPROXY_METRICS_PORT"]),
    }
    assert {a.port for a in listening} == ports
    assert {a.ip for a in listening} == {"127.0.0.1"}
    replicas = [
        p for p in psutil.process_iter(["name"]) if p.info["name"].startswith("ray::ServeRepli")
    ]
    direct = {
        c.laddr
        for p in replicas
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and 30_000 <= c.laddr.port < 31_000
    }
    assert direct and {a.ip for a in direct} == {"127.0.0.1"}  # HAProxy's backends


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_never_get_a_5xx(trained, mode):
    """Requests generated from the served OpenAPI spec: valid ones (positive) and ones that
    break it (negative), 150 each; none may get a 5xx."""
    cfg, _, _ = trained
    url = _deploy(cfg)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    strategy = schema["/predict"]["POST"].as_strategy(
        generation_mode=schemathesis.GenerationMode(mode)
    )
    statuses: Counter[int] = Counter()
    session = requests.Session()

    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def check(case) -> None:
        response = case.call(base_url=url, session=session, timeout=30)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])

    check()
    assert sum(statuses.values()) >= 125, statuses
    if mode == "positive":  # every request that follows the spec is answered
        assert set(statuses) == {200}, statuses
    if mode == "negative":
        assert set(statuses) <= {400, 411, 413, 415, 422}, statuses


def test_the_emitted_config_deploys_beside_it_and_answers(trained):
    """What `deploy --emit` writes, built from its import path and args as `serve deploy`
    builds it, answers on the same cluster: the config needs no file of this machine."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from rayops.serve import AppArgs, build_app, serve_config

    cfg, first, _ = trained
    url = _deploy(cfg)
    emitted = serve_config(
        cfg.with_overrides({"serve.app_name": "emitted", "serve.route_prefix": "/emitted"})
    )
    (application,) = ServeDeploySchema.parse_obj(emitted).applications
    assert application.import_path == "rayops.serve:build_app"
    serve.run(
        build_app(AppArgs.model_validate(application.args)),
        name=application.name,
        route_prefix=application.route_prefix,
        blocking=False,
    )
    try:
        wait_ready(f"{url}/emitted")
        answer = _post(f"{url}/emitted")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["version"] == first
    finally:
        serve.delete(application.name)


# Last of the default deployment's tests: it kills the replicas.
def test_served_requests_land_in_the_prediction_log_and_ten_rows_are_not_a_verdict(trained):
    import pandas as pd

    from rayops.errors import DataError
    from rayops.monitor.feedback import live_metrics
    from rayops.monitor.report import monitor_records, read_window

    cfg = trained[0]
    url = _deploy(cfg)
    ids = [f"logged-{i}" for i in range(5)]
    for request_id in ids:
        response = _post(url, headers={"X-Request-ID": request_id})
        assert response.status_code == 200 and response.json()["request_id"] == request_id

    def logged():
        try:
            window = read_window(cfg, hours=1)
        except DataError:  # no table before the first append
            return window_of_nothing
        return window[window["request_id"].isin(ids)]

    window_of_nothing = pd.DataFrame(columns=["request_id"])

    wait_for(lambda: len(logged()) == 10, 30, what="10 logged records")
    window = logged().sort_values(["request_id", "record_index"])
    assert window[["age", "contract"]].to_dict("records")[:2] == [
        {"age": r["age"], "contract": r["contract"]} for r in SAMPLE_RECORDS
    ]
    assert set(window["prediction"]) <= {"yes", "no"}
    metadata = requests.get(f"{url}/metadata", timeout=10).json()
    assert metadata["served"]["log_sampled"] >= 2 and "log_dropped" not in metadata["served"]
    result = monitor_records(cfg, window, log=False)
    assert result.report.verdict == "insufficient data"

    # Their true labels come back through the API and join the log by request id.
    truth = [
        {"request_id": r, "record_index": i, "label": "yes" if i == 0 else "no"}
        for r in ids
        for i in range(2)
    ]
    response = requests.post(f"{url}/feedback", json={"labels": truth}, timeout=30)
    assert response.status_code == 202 and response.json() == {"accepted": 10}
    # the replica dies right after its 202: the labels were stored before it answered
    _kill_replicas(f"{cfg.name}-model")
    _deployment_gone()
    assert sum(v["labelled"] for v in live_metrics(cfg, hours=1).values()) == 10
    expected = sum(p == t["label"] for p, t in zip(window["prediction"], truth, strict=True))
    (metrics,) = live_metrics(cfg, hours=1).values()  # one version served them
    assert metrics["live_accuracy"] == pytest.approx(expected / 10)


# ------------------------------------- a bearer token and a body limit, one deployment

GUARDED = {"serve.max_body_bytes": 10_000}  # with a bearer token: see `guarded`


@pytest.fixture(scope="module")
def guarded(trained, tmp_path_factory):
    """Settings with a bearer token and a small body limit (two tests share the deployment)."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text("t0ken-value\n")
    return {**GUARDED, "serve.auth_token_file": str(token_file)}


AUTHORIZED = {"Authorization": "Bearer t0ken-value"}


def test_non_finite_numbers_and_huge_bodies(trained, guarded):
    url = _deploy(trained[0], **guarded)
    body = '{"records": [{"age": 30, "tenure_months": NaN}]}'
    response = requests.post(
        f"{url}/predict",
        data=body,
        timeout=10,
        headers={"content-type": "application/json", **AUTHORIZED},
    )
    assert response.status_code == 422
    assert any(d["loc"][-1] == "tenure_months" for d in response.json()["detail"])
    assert _post(url, SAMPLE_RECORDS * 60, headers=AUTHORIZED).status_code == 413


def test_bearer_token_is_enforced(trained, guarded):
    url = _deploy(trained[0], **guarded)
    assert _post(url).status_code == 401
    assert _post(url, headers=AUTHORIZED).status_code == 200
    assert requests.get(f"{url}/health", timeout=10).status_code == 200


# --------------------------------------------------- two replicas, one deployment

TWO_REPLICAS = {
    "serve.autoscaling.min_replicas": 2,
    "serve.autoscaling.max_replicas": 2,
    "serve.max_ongoing_requests": 8,
    "serve.max_batch_size": 8,
}


def test_promotion_under_load_has_no_failed_requests_and_rollback(trained):
    cfg, first, second = trained
    url = _deploy(cfg, **TWO_REPLICAS)
    wait_for(lambda: _replicas(f"{cfg.name}-model") == 2)
    with Load(url, clients=4) as load:
        time.sleep(1)
        tracking.promote(cfg.tracking, cfg.model_name, second)
        wait_for(lambda: load.versions[second] > 20)
        time.sleep(2)  # both replicas on the new version
        seen = Counter(load.versions)
        tracking.rollback(cfg.tracking, cfg.model_name)
        wait_for(lambda: load.versions[first] > seen[first] + 20)
    assert set(load.statuses) == {200}, load.statuses
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == first


def _kill_replicas(deployment: str) -> None:
    """Kill every replica of the deployment at once (no graceful shutdown)."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}"):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)


def test_killed_replica_recovers(trained):
    import ray
    from ray import serve

    cfg, _, _ = trained
    name = f"{cfg.name}-model"
    url = _deploy(cfg, **TWO_REPLICAS)
    wait_for(lambda: _replicas(name) == 2, what="2 running replicas")

    def replicas() -> dict[str, str]:
        return {
            a["name"]: a["namespace"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP}#{name}")
        }

    def recovered() -> bool:
        app = serve.status().applications[APP]
        return victim not in replicas() and _replicas(name) == 2 and app.status == "RUNNING"

    with Load(url, clients=4) as load:
        time.sleep(1)
        victim, namespace = sorted(replicas().items())[0]
        ray.kill(ray.get_actor(victim, namespace=namespace), no_restart=True)
        wait_for(recovered, what="a replacement replica and a RUNNING application")
        served_before = load.statuses[200]
        time.sleep(1)
        assert load.statuses[200] > served_before  # still answering after the recovery
    _deployment_gone()
    failures = sum(n for status, n in load.statuses.items() if status != 200)
    assert failures <= 8, load.statuses  # at most the killed replica's in-flight requests


# --------------------------------------------------------------------------- shadow, canary


def _log_rows(cfg, since):
    from rayops.monitor.feedback import prediction_table, read_frame
    from rayops.operate.proving import LOG_COLUMNS

    return read_frame(prediction_table(cfg), LOG_COLUMNS, since)


def _shadow_version(url: str) -> str | None:
    shadow = requests.get(f"{url}/metadata", timeout=10).json()["shadow"]
    return shadow and shadow["model"]["version"]


def test_a_shadow_sees_mirrored_traffic_and_a_canary_key_sticks(trained):
    import datetime as dt

    from rayops.operate.signals import shadow_stats
    from rayops.serve.routing import in_share

    cfg, first, second = trained
    _as_challenger(cfg, second)
    since = dt.datetime.now(dt.UTC)
    url = _deploy(
        cfg,
        **{
            "serve.mirror_fraction": 1.0,
            "serve.canary_fraction": 0.3,
            "serve.autoscaling.min_replicas": 1,
            "serve.autoscaling.max_replicas": 1,
            "serve.log_flush_interval_s": 600,
        },
    )  # only shutdown writes
    assert _shadow_version(url) == second
    answered = {}
    for i in range(40):
        headers = {"X-Rayops-Key": f"user-{i % 20}", "X-Request-ID": f"shadowed-{i}"}
        response = _post(url, headers=headers)
        assert response.status_code == 200
        answered[i] = response.json()["model"]["version"]
    # each key's side is fixed by its hash: 20 keys, each asked twice, same answer both times
    assert answered == {i: second if in_share(f"user-{i % 20}", 0.3) else first for i in range(40)}
    canary = sum(v == second for v in answered.values())
    assert 0 < canary < 40

    time.sleep(1)  # the last mirror's thread
    assert _log_rows(cfg, since).empty
    from ray import serve

    serve.delete(APP)  # a clean replica shutdown writes what the log holds
    _deployment_gone()
    rows = _log_rows(cfg, since)
    assert (rows["role"] == "shadow").sum() == (40 - canary) * 2
    stats = shadow_stats(rows, second, "classification", 0.1)
    # every champion answer was mirrored; canary answers were not (they are v2's already)
    assert stats.shadow.records == stats.compared == (40 - canary) * 2
    assert stats.shadow.errors == 0 and stats.agreement is not None
    assert set(rows.loc[rows["role"] == "canary", "model_version"]) == {second}


def _diverged(cfg, source: str) -> str:
    """A copy of ``source`` whose weights are NaN (a training run that diverged),
    registered as a challenger that passed; returns its version."""
    import tempfile
    from pathlib import Path

    import pandas as pd
    import torch

    from rayops.predict import Predictor

    with tempfile.TemporaryDirectory() as folder:
        model = tracking.RegisteredModel(cfg.model_name, source, "", "", "")
        predictor = Predictor.load(
            tracking.download_bundle(cfg.tracking, model, Path(folder) / "in")
        )
        with torch.no_grad():
            for weights in predictor.bundle.model.network.parameters():
                weights.fill_(float("nan"))
        bundle_dir = predictor.bundle.save(Path(folder) / "nan")
        run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, "diverged")
        uri = tracking.log_model(
            cfg.tracking,
            run_id,
            bundle_dir,
            pd.DataFrame(SAMPLE_RECORDS),
            {n: False for n in predictor.features},
        )
        tracking.end_run(cfg.tracking, run_id)
    registered = tracking.register(cfg.tracking, cfg.model_name, uri, run_id)
    # as if it had passed the gate (a diverged model scores NaN and would fail it)
    _as_challenger(cfg, registered.version)
    return registered.version


def _as_challenger(cfg, version: str) -> None:
    """``version`` as a challenger that passed the gate (whatever the gate said of it in the
    fixture): replicas shadow and canary only a version the registry says passed."""
    client = tracking.client(cfg.tracking)
    tags = client.get_model_version(cfg.model_name, version).tags
    if tracking.WITHDRAWN_TAG in tags:  # an earlier test rolled it back
        client.delete_model_version_tag(cfg.model_name, version, tracking.WITHDRAWN_TAG)
    tracking.tag_version(cfg.tracking, cfg.model_name, version, {tracking.PASSED_TAG: "true"})
    tracking.set_alias(cfg.tracking, cfg.model_name, tracking.CHALLENGER, version)


def test_a_failing_shadow_and_champion_cost_no_request_and_are_rolled_back(trained):
    """A diverged model in shadow fails on every mirror and is refused; promoted anyway, its
    failures are answered by the previous champion under load, and the loop's watch rolls
    it back: not one non-2xx."""
    import datetime as dt

    from rayops.operate import Operator
    from rayops.operate.signals import shadow_stats, shadow_verdict
    from rayops.operate.state import CycleState, now_iso

    cfg, first, second = trained
    broken = _diverged(cfg, first)
    since = dt.datetime.now(dt.UTC)
    settings = {
        "serve.mirror_fraction": 1.0,
        "serve.autoscaling.min_replicas": 1,
        "serve.autoscaling.max_replicas": 1,
    }
    url = _deploy(cfg, **settings)
    assert _shadow_version(url) == broken
    for i in range(10):
        response = _post(url, headers={"X-Request-ID": f"mirrored-{i}"})
        assert response.status_code == 200 and response.json()["model"]["version"] == first

    def shadowed() -> bool:
        rows = _log_rows(cfg, since)
        return (rows["model_version"] == broken).sum() >= 20

    wait_for(shadowed, 30, what="the shadow's rows")
    stats = shadow_stats(_log_rows(cfg, since), broken, "classification", 0.1)
    assert stats.shadow.errors == stats.shadow.records == 20
    passed, why = shadow_verdict(cfg.operate.shadow.model_copy(update={"min_records": 20}), stats)
    assert not passed and "failed on 100.0%" in why

    operated = cfg.with_overrides(
        {**settings, "operate.rollback.watch_s": 60, "operate.rollback.min_records": 10}
    )
    operator = Operator(operated, poll_s=0.5)
    with Load(url, clients=4) as load:
        tracking.promote(cfg.tracking, cfg.model_name, broken)
        state = CycleState(
            1, "watch", None, {"champion": first, "challenger": broken, "promoted_at": now_iso()}
        )
        assert operator._watch(state) == "done"
        assert "rolled back to v" + first in state.facts["outcome"]
        served = load.versions[first]
        wait_for(lambda: load.versions[first] > served + 20)
    assert set(load.statuses) == {200}, load.statuses
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == first
    metadata = requests.get(f"{url}/metadata", timeout=10).json()
    assert metadata["served"]["champion_errors"] >= 10
    assert metadata["served"]["fallback_answers"] >= 10
    _as_challenger(cfg, second)
