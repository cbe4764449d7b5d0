import pytest
import torch
from ray import tune

from rayops.config import validate_config
from rayops.errors import ConfigError
from rayops.models.checkpoints import Progress
from rayops.models.torch_loop import lr_multiplier, make_scheduler, step_schedule
from rayops.tune import search_space


def _cfg(search: str):
    return validate_config(
        {
            "name": "t",
            "data": {
                "label": "y",
                "task": "classification",
                "columns": {"x": {"type": "numeric"}, "y": {"type": "categorical"}},
            },
            "tune": {
                "search": search,
                "search_space": {
                    "model.hidden_sizes": {"type": "choice", "values": [[8], [16, 8]]}
                },
            },
        }
    )


def test_grid_search_enumerates_choices_and_random_samples_them():
    assert search_space(_cfg("grid"))["model.hidden_sizes"] == tune.grid_search([[8], [16, 8]])
    assert isinstance(
        search_space(_cfg("random"))["model.hidden_sizes"], tune.search.sample.Categorical
    )


def test_learning_rate_warmup_then_cosine_and_step():
    train = (
        _cfg("random")
        .with_overrides(
            {"train.epochs": 10, "train.warmup_epochs": 2, "train.lr_schedule": "cosine"}
        )
        .train
    )
    factor = lr_multiplier(train)
    assert factor(0) == 0.1 and factor(1) == 0.55 and factor(2) == 1.0
    assert factor(9) < 0.05
    step = lr_multiplier(train.model_copy(update={"lr_schedule": "step", "warmup_epochs": 0}))
    assert [step(e) for e in (0, 5, 8)] == [1.0, 0.1, 0.1**2]


def test_early_stopping_progress_counts_stale_epochs():
    progress = Progress()
    for epoch, value in enumerate((0.5, 0.6, 0.59, 0.58), start=1):
        progress.update({"epoch": epoch, "valid_f1": value}, "valid_f1", "max")
    assert progress.best == 0.6 and progress.stale_epochs == 2
    assert progress.epoch == 4 and [h["epoch"] for h in progress.history] == [1, 2, 3, 4]
    assert progress.stopped_early(2) and not progress.stopped_early(3)
    assert not progress.stopped_early(None)


def test_plateau_schedule_halves_the_rate_when_the_metric_stalls_and_refuses_warmup():
    train = _cfg("random").with_overrides({"train.early_stopping_patience": 6}).train
    assert train.lr_schedule == "plateau" and train.plateau_patience == 2
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=0.01)
    scheduler = make_scheduler(optimizer, train, "max")
    rates = []
    for value in (0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7):
        step_schedule(scheduler, {"valid_f1": value}, "valid_f1")
        rates.append(round(scheduler.get_last_lr()[0], 6))
    assert rates == [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025]
    with pytest.raises(ConfigError, match=r"warmup_epochs \(2\) needs an lr_schedule"):
        _cfg("random").with_overrides({"train.warmup_epochs": 2})


def test_search_space_may_name_nested_settings_and_families():
    cfg = _cfg("random").with_overrides(
        {
            "tune.search_space": {
                "model.family": {"type": "choice", "values": ["mlp", "xgboost"]},
                "model.xgboost.max_depth": {"type": "randint", "low": 3, "high": 9},
            }
        }
    )
    assert set(search_space(cfg)) == {"model.family", "model.xgboost.max_depth"}
    with pytest.raises(ConfigError, match="model.xgboost.max_depth"):
        _cfg("random").with_overrides(
            {"tune.search_space": {"model.xgboost.depth": {"type": "choice", "values": [3]}}}
        )
