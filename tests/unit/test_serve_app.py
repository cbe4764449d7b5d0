"""The HTTP contract of a replica's FastAPI app, without Ray: validation and responses."""

import math

import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from rayops.config import load_config
from rayops.data.preprocess import fit
from rayops.data.stats import table_stats
from rayops.data.validate import ERROR, validate_frame
from rayops.demo import churn, config_path
from rayops.models import MLP, Bundle, MLPModel
from rayops.predict import Predictor
from rayops.serve.app import create_app
from rayops.serve.bodies import record_model

TOKEN = "s3cret-token"


class _Server:
    """Stands in for the Serve replica: same attributes, no Ray, no batching."""

    def __init__(self, predictor: Predictor, token: str | None = None) -> None:
        self.predictor = predictor
        self.record_model = record_model(predictor.schema, predictor.preprocessor.label)
        self.forecast_body = None  # a classifier: /predict, no /forecast
        self.max_records, self.max_body_bytes, self.token = 5, 4096, token
        self.task = predictor.task
        self.in_flight = 0
        self.observed: list[tuple[str, int]] = []

    async def predict(self, records, request_id=None, key=None):
        return {
            "model": {"name": "m", "version": "1", "alias": "champion", "run_id": "r"},
            "predictions": self.predictor.predict_records(records),
            "request_id": request_id,
        }

    async def feedback(self, labels):
        if getattr(self, "store_down", False):
            from rayops.errors import LabelsNotStored

            raise LabelsNotStored(
                f"{len(labels)} label(s) not stored: the store is down; send them again"
            )
        self.labels = labels
        return {"accepted": len(labels)}

    def metadata(self):
        return {
            "model": {"name": "m", "version": "1", "alias": "champion", "run_id": "r"},
            "alias_state": {
                "alias": "champion",
                "target_version": "1",
                "served_version": "1",
                "not_served": {},
                "registry_reachable": True,
                "registry_checked_s_ago": 0.5,
                "registry_error": None,
            },
            "task": "classification",
            "family": "mlp",
            "dataset": "d/v000001",
            "target_metric": "valid_f1",
            "metrics": {},
            "input_schema": self.record_model.model_json_schema(),
            "served": {},
        }

    def health(self):
        return {"status": "ok"}

    def observe(self, route, status, seconds):
        self.observed.append((route, status))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    cfg = load_config(config_path())
    used = [*cfg.data.feature_names, cfg.data.label]
    columns = {n: cfg.data.columns[n] for n in used}
    raw = churn.generate(400, 1).map(lambda v: "" if v is None or v != v else str(v))
    typed = validate_frame(raw, columns, cfg.data.label)
    typed = typed.filter(pc.is_null(typed.column(ERROR)))
    pre = fit(table_stats(typed, columns, cfg.data.label, cfg.data.task), cfg.data)
    arch = {"n_inputs": pre.n_features, "n_outputs": 2, "hidden_sizes": [4]}
    meta = {
        "architecture": arch,
        "preprocessor": pre.to_dict(),
        "schema": {n: cfg.data.columns[n].model_dump() for n in used},
    }
    model = MLPModel(MLP(pre.n_features, 2, [4]))
    folder = Bundle(model, meta).save(tmp_path_factory.mktemp("b"))
    return Predictor.load(folder)


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(_Server(predictor)))


GOOD = {
    "age": 30,
    "tenure_months": 3,
    "monthly_charges": 80.5,
    "total_charges": 240.0,
    "contract": "month-to-month",
    "internet_service": "fiber",
    "payment_method": "electronic_check",
    "support_calls": 2,
    "paperless_billing": True,
    "region": "north",
}


def test_predict_returns_class_and_probabilities(client):
    response = client.post("/predict", json={"records": [GOOD, {**GOOD, "region": None}]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["alias"] == "champion"
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["prediction"] in ("no", "yes")
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-4)


def test_health(client):
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({**GOOD, "age": "thirty"}, "age"),
        ({**GOOD, "age": 12}, "age"),
        ({**GOOD, "monthly_charges": "NaN"}, "monthly_charges"),
        ({**GOOD, "contract": "weekly"}, "contract"),
        ({**GOOD, "surprise": 1}, "surprise"),
        ({k: v for k, v in GOOD.items() if k != "tenure_months"}, "tenure_months"),
        ({**GOOD, "paperless_billing": "maybe"}, "paperless_billing"),
    ],
)
def test_invalid_record_is_422_naming_index_and_field(client, record, field):
    response = client.post("/predict", json={"records": [GOOD, record]})
    assert response.status_code == 422
    locations = [d["loc"] for d in response.json()["detail"]]
    assert any(loc[:4] == ["body", "records", 1, field] for loc in locations), locations


def test_whole_numbers_written_as_floats_are_integers(client):
    """JSON Schema's integer includes 95.0; a fraction or a numeric string does not."""
    assert client.post("/predict", json={"records": [{**GOOD, "age": 95.0}]}).status_code == 200
    for bad in (95.5, "95", True):
        response = client.post("/predict", json={"records": [{**GOOD, "age": bad}]})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", "records", 0, "age"]


def test_non_finite_number_is_422(client):
    body = (
        '{"records": ['
        + str(GOOD).replace("'", '"').replace("True", "true").replace("80.5", "Infinity")
        + "]}"
    )
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_too_many_or_zero_records_is_422(client):
    assert client.post("/predict", json={"records": [GOOD] * 6}).status_code == 422
    assert client.post("/predict", json={"records": []}).status_code == 422


def test_body_too_large_is_413_and_missing_length_411(client):
    big = '{"records": [' + ",".join(['{"age": 30}'] * 400) + "]}"
    response = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit of 4096" in response.json()["detail"]

    def chunks():
        yield b'{"records": []}'

    chunked = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 411


def test_bearer_token_is_required_except_for_health(predictor):
    secured = TestClient(create_app(_Server(predictor, token=TOKEN)))
    assert secured.post("/predict", json={"records": [GOOD]}).status_code == 401
    wrong = secured.post(
        "/predict", json={"records": [GOOD]}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert secured.get("/metadata").status_code == 401
    assert secured.get("/health").status_code == 200
    ok = secured.post(
        "/predict", json={"records": [GOOD]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200


class _Broken(_Server):
    async def predict(self, records, request_id=None, key=None):
        raise RuntimeError("secret internals /etc/passwd")


def test_unexpected_errors_are_500_referencing_the_request_id(predictor):
    response = TestClient(create_app(_Broken(predictor)), raise_server_exceptions=False).post(
        "/predict", json={"records": [GOOD]}
    )
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32
    assert response.json()["detail"] == f"internal error (reference {request_id})"
    assert "secret" not in response.text and "Traceback" not in response.text
    # Behind Serve's proxy the request already carries an id: that one is the reference.
    given = TestClient(create_app(_Broken(predictor)), raise_server_exceptions=False).post(
        "/predict", json={"records": [GOOD]}, headers={"X-Request-ID": "abc123"}
    )
    assert given.json()["detail"] == "internal error (reference abc123)"
    assert "x-request-id" not in given.headers  # the proxy adds it to the response


def test_every_response_is_counted_by_route_and_status(predictor):
    server = _Server(predictor, token=TOKEN)
    secured = TestClient(create_app(server))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def chunks():
        yield b'{"records": []}'

    secured.post("/predict", json={"records": [GOOD]}, headers=auth)
    secured.post("/predict", json={"records": [GOOD]})
    secured.post("/predict", json={"records": [{**GOOD, "age": "x"}]}, headers=auth)
    secured.post("/predict", content="x" * 5000, headers=auth)
    secured.post("/predict", content=chunks(), headers=auth)
    secured.get("/health")
    secured.get("/nowhere", headers=auth)
    broken = _Broken(predictor)
    TestClient(create_app(broken), raise_server_exceptions=False).post(
        "/predict", json={"records": [GOOD]}
    )
    assert server.observed == [
        ("/predict", 200),
        ("/predict", 401),
        ("/predict", 422),
        ("/predict", 413),
        ("/predict", 411),
        ("/health", 200),
        ("other", 404),
    ]
    assert broken.observed == [("/predict", 500)]


def test_metadata_describes_model_and_input_schema(client):
    body = client.get("/metadata").json()
    assert body["model"]["alias"] == "champion"
    assert set(body["input_schema"]["properties"]) >= {"age", "contract", "region"}
    assert "churned" not in body["input_schema"]["properties"]


def test_app_builder_for_serve_run_takes_typed_args():
    from ray.serve import Application

    from rayops.serve import AppArgs, build_app

    app = build_app(AppArgs(config=str(config_path()), overrides=["serve.max_batch_size=8"]))
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="confg\n  Extra inputs are not permitted"):
        AppArgs.model_validate({"confg": "x.yaml"})
    with pytest.raises(ValueError, match="exactly one of 'pipeline'.*and 'config'"):
        AppArgs.model_validate({})


def test_emitted_serve_config_is_valid_for_serve_deploy(tmp_path):
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema
    from typer.testing import CliRunner

    from rayops.cli import app
    from rayops.serve import AppArgs, build_app, deployment_options

    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(
        app,
        [
            "deploy",
            str(config_path()),
            "--emit",
            str(out),
            "--set",
            "serve.max_queued_requests=7",
            "--set",
            "serve.access_log=false",
            "--set",
            "serve.autoscaling.look_back_period_s=15",
        ],
    )
    assert result.exit_code == 0, result.output
    emitted = yaml.safe_load(out.read_text())
    parsed = ServeDeploySchema.parse_obj(emitted)
    (application,) = parsed.applications
    assert application.import_path == "rayops.serve:build_app"
    # The pipeline config travels inline, overrides applied: no path of this machine in it.
    assert set(application.args) == {"pipeline"}
    assert str(config_path()) not in out.read_text()
    inline = AppArgs.model_validate(application.args)
    from rayops.config import validate_config

    expected = load_config(
        config_path(),
        [
            "serve.max_queued_requests=7",
            "serve.access_log=false",
            "serve.autoscaling.look_back_period_s=15",
        ],
    )
    assert validate_config(inline.pipeline) == expected
    assert isinstance(build_app(inline), Application)
    (deployment,) = application.deployments
    assert deployment.max_queued_requests == 7
    assert deployment.autoscaling_config["max_replicas"] == 2
    assert deployment.autoscaling_config["look_back_period_s"] == 15
    assert deployment.logging_config.enable_access_log is False
    # the app's code shares the replica's loop unless serve.user_code_thread says otherwise
    env = deployment.ray_actor_options.runtime_env["env_vars"]
    assert env == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    own = deployment_options(expected.with_overrides({"serve.user_code_thread": True}))
    assert own["ray_actor_options"]["runtime_env"]["env_vars"] == {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"
    }
    assert parsed.http_options.host == "127.0.0.1"


def test_feedback_is_accepted_with_202_and_bad_labels_are_422(client, predictor):
    answer = client.post("/predict", json={"records": [GOOD]}, headers={"X-Request-ID": "r-1"})
    assert answer.json()["request_id"] == "r-1"
    labels = [
        {"request_id": "r-1", "label": "yes"},
        {"request_id": "r-2", "record_index": 3, "label": 12.5},
    ]
    response = client.post("/feedback", json={"labels": labels})
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert client.app.server.labels == [{**labels[0], "record_index": 0}, labels[1]]
    client.app.server.store_down = True  # not stored: a 503 saying so, never a 202
    refused = client.post("/feedback", json={"labels": labels})
    client.app.server.store_down = False
    assert refused.status_code == 503 and "2 label(s) not stored" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "1"
    for bad, field in (
        ({"request_id": "", "label": "yes"}, "request_id"),
        ({"request_id": "r", "label": None}, "label"),
        ({"request_id": "r", "label": "yes", "record_index": -1}, "record_index"),
        ({"request_id": "r", "label": "yes", "extra": 1}, "extra"),
    ):
        refused = client.post("/feedback", json={"labels": [bad]})
        assert refused.status_code == 422, bad
        assert field in refused.json()["detail"][0]["loc"], refused.json()
    assert client.post("/feedback", json={"labels": []}).status_code == 422


def test_a_diverged_model_fails_instead_of_answering_nan(predictor, tmp_path):
    import torch

    from rayops.errors import PredictionError

    diverged = Predictor.load(predictor.bundle.save(tmp_path / "copy"))
    with torch.no_grad():
        for weights in diverged.bundle.model.network.parameters():
            weights.fill_(float("nan"))
    with pytest.raises(PredictionError, match="non-finite outputs for 2 of 2 record"):
        diverged.predict_records([GOOD, GOOD])
    assert predictor.predict_records([GOOD])[0]["prediction"] in ("yes", "no")


def test_a_huge_integer_is_a_422_naming_the_field_not_a_500():
    from fastapi import FastAPI

    from rayops.config import ColumnSpec
    from rayops.serve.bodies import request_model

    record = record_model(
        {"calls": ColumnSpec(type="integer"), "y": ColumnSpec(type="categorical")}, "y"
    )
    app = FastAPI()

    @app.post("/p")
    def handler(body: request_model(record, 5)) -> dict:  # type: ignore[valid-type]
        return {"calls": [float(r.calls) for r in body.records]}

    client = TestClient(app)
    assert client.post("/p", json={"records": [{"calls": -(2**53)}]}).status_code == 200
    response = client.post(
        "/p",
        content='{"records": [{"calls": 1}, {"calls": ' + "9" * 400 + "}]}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "records", 1, "calls"]
    assert "less than or equal to 9007199254740992" in detail["msg"]


def test_a_regression_models_feedback_takes_numbers_only(predictor):
    server = _Server(predictor)
    server.task = "regression"
    client = TestClient(create_app(server))
    ok = client.post(
        "/feedback",
        json={"labels": [{"request_id": "r", "label": 12}, {"request_id": "s", "label": 3.5}]},
    )
    assert ok.status_code == 202
    assert [item["label"] for item in server.labels] == [12.0, 3.5]
    for bad in ("12", "high", True, None):
        refused = client.post("/feedback", json={"labels": [{"request_id": "r", "label": bad}]})
        assert refused.status_code == 422, bad
        assert refused.json()["detail"][0]["loc"][:4] == ["body", "labels", 0, "label"]
