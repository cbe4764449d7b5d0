import os
import pickle

import pytest
import torch

from rayops.errors import TrainingError
from rayops.models import MLP, WEIGHTS, Bundle, load_state_dict


def test_bundle_round_trip(tmp_path):
    model = MLP(5, 2, [8, 4], dropout=0.0)
    meta = {"architecture": {"n_inputs": 5, "n_outputs": 2, "hidden_sizes": [8, 4],
                             "dropout": 0.0, "activation": "relu"}}
    Bundle(model, meta).save(tmp_path)
    loaded = Bundle.load(tmp_path)
    x = torch.randn(3, 5)
    model.eval()
    torch.testing.assert_close(loaded.model(x), model(x))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_tampered_weights_with_pickled_code_are_refused(tmp_path):
    path = tmp_path / WEIGHTS
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(TrainingError, match="refusing to load"):
        load_state_dict(path)
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    assert load_state_dict(path)["epoch"] == 3


def test_folder_without_bundle_is_rejected(tmp_path):
    with pytest.raises(TrainingError, match="not a rayops model bundle"):
        Bundle.load(tmp_path)
