import os
import pickle

import numpy as np
import pytest
import torch

from rayops.errors import TrainingError
from rayops.models import BUNDLE, MLP, WEIGHTS, Bundle, MLPModel, load_state_dict
from rayops.models.mlp import auto_hidden_sizes, embedding_dim, embeddings_for
from rayops.models.xgboost import MODEL_FILE, XGBoostModel


def test_bundle_round_trip(tmp_path):
    model = MLP(5, 2, [8, 4], dropout=0.0)
    meta = {
        "architecture": {
            "n_inputs": 5,
            "n_outputs": 2,
            "hidden_sizes": [8, 4],
            "dropout": 0.0,
            "activation": "relu",
        }
    }
    Bundle(MLPModel(model), meta).save(tmp_path)
    loaded = Bundle.load(tmp_path)
    x = torch.randn(3, 5)
    model.eval()
    assert loaded.family == "mlp"
    torch.testing.assert_close(loaded.model.network(x), model(x))


class _Payload:
    """Unpickling it runs a shell command that leaves a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_weights_with_pickled_code_are_refused(tmp_path):
    # A real torch.save file (zip, right magic number) whose pickle holds the payload: a
    # plain torch.load(weights_only=False) loads it without complaint, running the payload.
    marker, path = tmp_path / "pwned", tmp_path / WEIGHTS
    torch.save({"w": torch.ones(2), "hook": _Payload(marker)}, path)
    with pytest.raises(TrainingError, match="refusing to load"):
        load_state_dict(path)
    with pytest.raises(TrainingError, match="refusing to load"):
        load_state_dict(path.read_bytes(), name="checkpoint.pt")
    assert not marker.exists(), "the payload ran"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    assert load_state_dict(path)["epoch"] == 3


def test_folder_without_bundle_is_rejected(tmp_path):
    with pytest.raises(TrainingError, match="not a rayops model bundle"):
        Bundle.load(tmp_path)


def test_wide_categoricals_get_embeddings_and_hidden_sizes_follow_the_inputs():
    cities = [f"c{i}" for i in range(40)]
    features = [
        {"name": "a", "kind": "numeric"},
        {"name": "city", "kind": "categorical", "categories": cities},
        {"name": "when", "kind": "datetime", "parts": [{"part": "month"}] * 2},
        {"name": "plan", "kind": "categorical", "categories": ["x", "y"]},
    ]
    assert embeddings_for(features, 16) == [[1, 41, embedding_dim(41)]] == [[1, 41, 13]]
    assert embeddings_for(features, None) == []
    assert auto_hidden_sizes(10) == [256, 256] and auto_hidden_sizes(300) == [1024, 1024]
    assert auto_hidden_sizes(200) == [512, 512] and auto_hidden_sizes(5000) == [1024, 1024]
    n_inputs = 1 + 41 + 2 + 3
    model = MLP(n_inputs, 2, [8], embeddings=embeddings_for(features, 16)).eval()
    assert model.net[0].in_features == n_inputs - 41 + 13
    x = torch.zeros(2, n_inputs)
    x[0, 1 + 5] = x[1, 1 + 6] = 1.0  # two different cities, every other input the same
    out = model(x)
    assert out.shape == (2, 2) and not torch.allclose(out[0], out[1])


def _booster(rows: int = 200):
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)
    params = {"objective": "multi:softprob", "num_class": 2, "max_depth": 3}
    return xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=5), x


def test_xgboost_bundle_round_trip_gives_the_same_probabilities(tmp_path):
    booster, x = _booster()
    meta = {"architecture": {"family": "xgboost", "n_inputs": 4, "n_outputs": 2}}
    Bundle(XGBoostModel(booster), meta).save(tmp_path)
    assert (tmp_path / MODEL_FILE).read_bytes()[:1] == b"{"
    loaded = Bundle.load(tmp_path)
    assert loaded.family == "xgboost"
    probabilities = loaded.model.outputs(x, probabilities=True)
    np.testing.assert_allclose(probabilities, booster.inplace_predict(x), rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_an_xgboost_model_file_with_a_pickled_payload_is_refused(tmp_path):
    booster, _ = _booster()
    meta = {"architecture": {"family": "xgboost", "n_inputs": 4, "n_outputs": 2}}
    Bundle(XGBoostModel(booster), meta).save(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(TrainingError, match="not an XGBoost JSON/UBJSON model"):
        Bundle.load(tmp_path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / MODEL_FILE).write_bytes(b"{ not a model")
    with pytest.raises(TrainingError, match="not a valid XGBoost model"):
        Bundle.load(tmp_path)


def test_an_unknown_family_is_named(tmp_path):
    (tmp_path / BUNDLE).write_text('{"architecture": {"family": "forest"}}')
    with pytest.raises(TrainingError, match="unknown model family 'forest'"):
        Bundle.load(tmp_path)
