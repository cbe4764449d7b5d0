"""Checks without a trained model: the behavioural checks on a rule that is known to read
(or ignore) a column, the reports (console, JUnit, Markdown), which model ``--model``
names, and the config's cross-checks. Fitted models, the gate and ``rayops check``:
tests/integration/test_checks.py."""

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from rayops.checks import CheckReport, CheckResult
from rayops.checks.behaviour import directional, invariance, minimum
from rayops.cli.registry import parse_model
from rayops.config import validate_config
from rayops.config.checks import DirectionalCheck, InvarianceCheck, MinimumCheck
from rayops.errors import ConfigError, DataError


class Rule:
    """P(yes) rises with ``x``; reads ``id`` when ``leaky``; refuses x above 100."""

    features = ["x", "id"]
    preprocessor = SimpleNamespace(rules=SimpleNamespace(probabilities=True), classes=["no", "yes"])

    def __init__(self, leaky: bool = False) -> None:
        self.leaky = leaky

    def predict(self, frame: pd.DataFrame) -> list[dict]:
        if (frame["x"] > 100).any():
            raise DataError("record 0: x: above max 100")
        logit = frame["x"].to_numpy(float) + (self.leaky * (frame["id"] == "a").to_numpy())
        p = 1 / (1 + np.exp(-logit))
        return [
            {"prediction": "yes" if q > 0.5 else "no", "probabilities": {"no": 1 - q, "yes": q}}
            for q in p
        ]


FRAME = pd.DataFrame({"x": np.linspace(-2, 2, 40), "id": ["a", "b"] * 20})


def test_invariance_catches_a_rule_that_reads_the_id_and_passes_one_that_does_not():
    check = InvarianceCheck(name="ids change nothing", columns=["id"], perturb="set", value="b")
    rng = np.random.default_rng(0)
    assert invariance(Rule(), check, FRAME, rng, 3).passed
    caught = invariance(Rule(leaky=True), check, FRAME, rng, 3)
    assert not caught.passed and "20 of 40 record(s) moved more than 0.02" in caught.detail
    assert len(caught.examples) == 3 and caught.examples[0]["id"] == "b"


def test_directional_checks_judge_the_mean_and_the_share_moving_against_it():
    up = DirectionalCheck(
        name="more x, more yes", column="x", change={"add": 1}, expect="up", of_class="yes"
    )
    assert directional(Rule(), up, FRAME, 3).passed
    down = directional(Rule(), up.model_copy(update={"expect": "down"}), FRAME, 3)
    assert not down.passed and "expected down" in down.detail and down.examples
    far = DirectionalCheck.model_validate({**up.model_dump(), "change": {"add": 200}})
    broken = directional(Rule(), far, FRAME, 3)
    assert (
        not broken.passed and "could not be run: record 0: x: above max 100" in broken.detail
    )  # a check that cannot run never passes
    unknown = directional(Rule(), up.model_copy(update={"of_class": "maybe"}), FRAME, 3)
    assert not unknown.passed and "not a class of the model" in unknown.detail


def test_minimum_functionality_names_the_records_that_got_another_answer():
    check = MinimumCheck(
        name="high x is yes",
        records=[{"x": 3, "id": "a"}, {"x": -3, "id": "b"}],
        expect_class="yes",
    )
    found = minimum(Rule(), check, 3)
    assert not found.passed and found.detail == "1 of 2 record(s) got class 'yes'"
    assert found.examples == [{"record": 1, "x": -3, "id": "b", "got": "no"}]
    ranged = MinimumCheck(
        name="p", records=[{"x": 0, "id": "a"}], of_class="yes", expect_min=0.4, expect_max=0.6
    )
    assert minimum(Rule(), ranged, 3).passed


def test_the_reports_carry_every_check_and_the_failures_examples():
    report = CheckReport(
        "churn v3",
        "churn/v000002",
        [
            CheckResult("directional", "contract", True, "moved down"),
            CheckResult(
                "slices",
                "valid_f1 by region",
                False,
                "west 0.41 < 0.55",
                [{"slice": "region=west", "valid_f1": 0.41}],
            ),
        ],
    )
    assert not report.passed and report.summary().startswith("1 of 2 check(s) failed")
    lines = report.lines()
    assert "  FAIL  slices: valid_f1 by region: west 0.41 < 0.55" in lines
    assert lines[-1].startswith("FAILED: ")
    suite = ET.fromstring(report.junit())
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.find("testcase[@name='valid_f1 by region']/failure")
    assert failure is not None and "region=west" in failure.text
    markdown = report.markdown()
    assert "| ❌ | slices: valid_f1 by region | west 0.41 < 0.55 |" in markdown
    assert '"slice": "region=west"' in markdown


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ("churn", None, None)),
        ("3", ("churn", None, "3")),
        ("@challenger", ("churn", "challenger", None)),
        ("other@champion", ("other", "champion", None)),
        ("other@7", ("other", None, "7")),
        ("other", ("other", None, None)),
    ],
)
def test_which_model_check_reads(spec, expected):
    assert parse_model(spec, "churn") == expected


def _config(task: str = "classification", **checks) -> dict:
    columns = {"x": {"type": "numeric"}, "y": {"type": "categorical", "values": ["no", "yes"]}}
    if task == "regression":
        columns["y"] = {"type": "numeric"}
    return {"name": "t", "data": {"label": "y", "task": task, "columns": columns}, "checks": checks}


@pytest.mark.parametrize(
    ("task", "checks", "match"),
    [
        (
            "classification",
            {"invariance": [{"name": "i", "columns": ["id"]}]},
            r"checks change \['id'\], not features of this pipeline",
        ),
        (
            "classification",
            {"directional": [{"name": "d", "column": "x", "change": {"add": 1}, "expect": "up"}]},
            "needs of_class",
        ),
        (
            "classification",
            {
                "directional": [
                    {
                        "name": "d",
                        "column": "x",
                        "change": {"add": 1},
                        "expect": "up",
                        "of_class": "maybe",
                    }
                ]
            },
            "'maybe' is not a value of the label",
        ),
        (
            "regression",
            {"minimum": [{"name": "m", "records": [{"x": 1}], "expect_class": "a"}]},
            "predicts a value",
        ),
        (
            "classification",
            {"slices": [{"column": "x", "metric": "valid_rmse", "floor": 1}]},
            "not a metric of a classification model",
        ),
        ("classification", {"slices": [{"column": "x"}]}, "judges nothing"),
        (
            "classification",
            {
                "directional": [
                    {"name": "d", "column": "x", "change": {}, "expect": "up", "of_class": "yes"}
                ]
            },
            "exactly one of set, add, multiply",
        ),
    ],
)
def test_checks_that_cannot_mean_anything_are_refused_naming_the_key(task, checks, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(_config(task, **checks))


def test_a_forecaster_is_checked_on_covariates_and_a_recommender_on_its_top_k():
    forecasting = {
        "name": "d",
        "data": {
            "label": "demand",
            "task": "forecasting",
            "columns": {
                "ts": {"type": "datetime", "nullable": False},
                "temp": {"type": "numeric"},
                "demand": {"type": "numeric"},
            },
            "forecast": {
                "timestamp": "ts",
                "frequency": "1h",
                "horizon": 24,
                "known_in_advance": ["temp"],
            },
        },
        "checks": {"invariance": [{"name": "i", "columns": ["demand"]}]},
    }
    with pytest.raises(ConfigError, match=r"checks change \['demand'\], not covariates"):
        validate_config(forecasting)
    forecasting["checks"] = {
        "directional": [
            {"name": "warmer, more demand", "column": "temp", "change": {"add": 10}, "expect": "up"}
        ]
    }
    assert validate_config(forecasting).checks.directional[0].column == "temp"
    watching = {
        "name": "w",
        "data": {
            "task": "recommendation",
            "columns": {
                "user": {"type": "categorical", "nullable": False},
                "item": {"type": "categorical", "nullable": False},
                "ts": {"type": "datetime", "nullable": False},
            },
            "recommend": {"user": "user", "item": "item", "timestamp": "ts"},
        },
        "checks": {"invariance": [{"name": "i", "columns": ["item"]}]},
    }
    with pytest.raises(ConfigError, match="not yet a recommendation model's"):
        validate_config(watching)
    watching["checks"] = {
        "minimum": [{"name": "m", "records": [{"user": "u"}], "expect_class": "x"}]
    }
    with pytest.raises(ConfigError, match="expect_in_top_k is for a recommendation model"):
        validate_config(watching)


def test_check_without_checks_or_without_a_model_ends_in_one_line(tmp_path, capsys):
    from rayops.cli import main

    config = tmp_path / "t.yaml"
    raw = _config()
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as none_declared:
        main(["check", str(config)])
    assert none_declared.value.code == 2 and "declares no checks" in capsys.readouterr().err
    raw["checks"] = {"data": {"max_quarantine_fraction": 0.1}}
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as no_model:
        main(["check", str(config)])
    err = capsys.readouterr().err
    assert no_model.value.code == 2 and "no version of the model 't' is registered" in err
    assert "Traceback" not in err
