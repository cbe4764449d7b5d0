"""The HTTP contract of a replica's FastAPI app, without Ray: validation and responses."""

import math

import numpy as np
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from rayops.config import load_config
from rayops.data.preprocess import fit
from rayops.data.schema import ERROR, validate_frame
from rayops.data.stats import table_stats
from rayops.demo import churn, config_path
from rayops.models import MLP, Bundle
from rayops.predict import Predictor
from rayops.serve import ModelInfo, create_app


class _Server:
    """Stands in for ModelServer: same attributes, batching replaced by a direct call."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.info = ModelInfo(name="m", version="1", alias="champion", run_id="r")
        self.max_records = 5

    async def predict_batch(self, matrix: np.ndarray):
        return self.predictor.predict_matrix(matrix)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    cfg = load_config(config_path())
    used = [*cfg.data.feature_names, cfg.data.label]
    columns = {n: cfg.data.columns[n] for n in used}
    raw = churn.generate(400, 1).map(lambda v: "" if v is None or v != v else str(v))
    typed = validate_frame(raw, columns, cfg.data.label)
    typed = typed.filter(pc.is_null(typed.column(ERROR)))
    pre = fit(table_stats(typed, columns, cfg.data.label, cfg.data.task), cfg.data)
    arch = {"n_inputs": pre.n_features, "n_outputs": 2, "hidden_sizes": [4]}
    meta = {"architecture": arch, "preprocessor": pre.to_dict(),
            "schema": {n: cfg.data.columns[n].model_dump() for n in used}}
    folder = Bundle(MLP(pre.n_features, 2, [4]), meta).save(tmp_path_factory.mktemp("b"))
    return TestClient(create_app(_Server(Predictor.load(folder))))


GOOD = {"age": 30, "tenure_months": 3, "monthly_charges": 80.5, "total_charges": 240.0,
        "contract": "month-to-month", "internet_service": "fiber",
        "payment_method": "electronic_check", "support_calls": 2, "paperless_billing": True,
        "region": "north"}


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


@pytest.mark.parametrize(("record", "field"), [
    ({**GOOD, "age": "thirty"}, "age"),
    ({**GOOD, "age": 12}, "age"),
    ({**GOOD, "monthly_charges": "NaN"}, "monthly_charges"),
    ({**GOOD, "contract": "weekly"}, "contract"),
    ({**GOOD, "surprise": 1}, "surprise"),
    ({k: v for k, v in GOOD.items() if k != "tenure_months"}, "tenure_months"),
    ({**GOOD, "paperless_billing": "maybe"}, "paperless_billing"),
])
def test_invalid_record_is_422_naming_index_and_field(client, record, field):
    response = client.post("/predict", json={"records": [GOOD, record]})
    assert response.status_code == 422
    locations = [d["loc"] for d in response.json()["detail"]]
    assert any(loc[:4] == ["body", "records", 1, field] for loc in locations), locations


def test_non_finite_number_is_422(client):
    body = '{"records": [' + str(GOOD).replace("'", '"').replace("True", "true").replace(
        "80.5", "Infinity") + "]}"
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_too_many_or_zero_records_is_422(client):
    assert client.post("/predict", json={"records": [GOOD] * 6}).status_code == 422
    assert client.post("/predict", json={"records": []}).status_code == 422


def test_app_builder_for_serve_run_takes_typed_args():
    from ray.serve import Application

    from rayops.serve import AppArgs, build_app

    app = build_app(AppArgs(config=str(config_path()), overrides=["serve.max_batch_size=8"]))
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="config"):
        AppArgs.model_validate({"confg": "x.yaml"})
