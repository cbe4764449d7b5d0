"""Declared checks against real models, stores and the registry: models fitted here on
curated churn data (tests/helpers.fitted_bundle) whose behaviour the data decides. A model
that reads an id fails an invariance check; one whose region ``west`` was trained on
scrambled labels fails a slice floor while the whole looks fine; one trained where long
contracts churn more fails the directional check that they churn less, and the gate
refuses it (fail closed, even as the first model) with the check named on the version;
``rayops check`` exits 1 and writes a JUnit file with the failing cases, and 0 for a
check the model passes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from rayops import tracking
from rayops.checks import run_checks
from rayops.cli import main
from rayops.data.ingest import file_source, ingest
from rayops.demo import churn
from rayops.gate import register_and_gate
from rayops.predict import Predictor
from rayops.train.driver import log_bundle
from tests.helpers import demo_config, fitted_bundle

pytestmark = [pytest.mark.integration]

# A model fitted on 2,000 noisy rows is no monotone function: most records, not all, move
CONTRACT_DOWN = {
    "name": "a two-year contract churns less",
    "column": "contract",
    "change": {"set": "two-year"},
    "expect": "down",
    "of_class": "yes",
    "min_share": 0.7,
    "tolerance": 0.05,
}
CONTRACT_UP = {
    **CONTRACT_DOWN,
    "name": "a two-year contract churns more (reversed)",
    "expect": "up",
}
SUPPORT_UP = {
    "name": "more calls to support, more churn",
    "column": "support_calls",
    "change": {"add": 3},
    "expect": "up",
    "of_class": "yes",
    "min_share": 0.7,
    "tolerance": 0.05,
}
REGION_FLOOR = {
    "column": "region",
    "metric": "valid_accuracy",
    "relative_floor": 0.9,
    "min_rows": 50,
}


def _dataset(tmp: Path, frame, **overrides):
    cfg = demo_config(tmp, **overrides)
    churn.write(frame, file_source(cfg).location, files=1)
    return cfg, ingest(cfg)


def _logged(cfg, version, folder: Path) -> tuple[str, str]:
    """A model fitted here, logged as a training run logs one: (model URI, run id)."""
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, f"{cfg.name}-train")
    uri = log_bundle(
        cfg, version, run_id, fitted_bundle(cfg, version, run_id, folder), cfg.model.family
    )
    tracking.end_run(cfg.tracking, run_id)
    return uri, run_id


@pytest.fixture(scope="module")
def scrambled_west(tmp_path_factory, ray_start_4_cpus):
    """Churn data whose region ``west`` has random labels, and a model fitted on it."""
    tmp = tmp_path_factory.mktemp("west")
    frame = churn.generate(2500, 5)
    rng = np.random.default_rng(0)
    west = (frame["region"] == "west").to_numpy()
    frame.loc[west, "churned"] = rng.choice(["yes", "no"], int(west.sum()))
    cfg, version = _dataset(tmp, frame)
    return cfg, version, Predictor.load(fitted_bundle(cfg, version, "r", tmp / "model"))


@pytest.fixture(scope="module")
def reversed_contract(tmp_path_factory, ray_start_4_cpus):
    """Churn data whose month-to-month and two-year contracts swapped places after the
    labels were drawn (long contracts churn more), and a model fitted on it."""
    tmp = tmp_path_factory.mktemp("reversed")
    frame = churn.generate(2500, 9)
    frame["contract"] = frame["contract"].replace(
        {"month-to-month": "two-year", "two-year": "month-to-month"}
    )
    cfg, version = _dataset(tmp, frame)
    return (cfg, version, *_logged(cfg, version, tmp / "model"))


def test_an_invariance_check_catches_a_model_that_reads_an_id(tmp_path, ray_start_4_cpus):
    frame = churn.generate(1500, 3)
    # an "agent id" that leaks the label: the model learns to read it
    frame["agent_id"] = np.where(frame["churned"] == "yes", "A1", "A2")
    columns = {
        **{
            k: v.model_dump(exclude_none=True)
            for k, v in demo_config(tmp_path).data.columns.items()
        },
        "agent_id": {"type": "categorical"},
    }
    cfg, version = _dataset(
        tmp_path,
        frame,
        **{"data.columns": yaml.safe_dump(columns, default_flow_style=True).strip()},
    )
    predictor = Predictor.load(fitted_bundle(cfg, version, "r", tmp_path / "model"))
    cfg = cfg.with_overrides(
        {
            "checks": {
                "invariance": [
                    {
                        "name": "the agent changes nothing",
                        "columns": ["agent_id"],
                        "perturb": "set",
                        "value": "A1",
                    },
                    {
                        "name": "region changes little",
                        "columns": ["region"],
                        "perturb": "shuffle",
                        "tolerance": 0.5,
                    },
                ]
            }
        }
    )
    found = run_checks(cfg, predictor, version, "leaky")
    by_name = {r.name: r for r in found.results}
    leak = by_name["the agent changes nothing"]
    assert not leak.passed and "moved more than 0.02 when set agent_id" in leak.detail
    assert leak.examples and leak.examples[0]["agent_id"] == "A1", leak.examples
    assert by_name["region changes little"].passed, by_name["region changes little"]


def test_a_slice_floor_and_a_directional_check_judge_a_fitted_model(scrambled_west):
    cfg, version, predictor = scrambled_west
    checked = cfg.with_overrides(
        {"checks": {"directional": [CONTRACT_DOWN, CONTRACT_UP], "slices": [REGION_FLOOR]}}
    )
    found = {r.name: r for r in run_checks(checked, predictor, version, "west").results}
    assert found[CONTRACT_DOWN["name"]].passed, found[CONTRACT_DOWN["name"]]
    assert not found[CONTRACT_UP["name"]].passed
    region = found["valid_accuracy by region"]
    assert not region.passed and [e["slice"] for e in region.examples] == ["region=west"]
    assert "north" in region.detail and "west" in region.detail


def test_the_gate_refuses_a_model_that_fails_a_check_and_rayops_check_says_so(
    reversed_contract, tmp_path, capsys
):
    cfg, version, uri, run_id = reversed_contract
    strict = cfg.with_overrides({"checks": {"directional": [CONTRACT_DOWN]}})
    refused = register_and_gate(strict, uri, run_id, version)
    assert not refused.passed and not refused.promoted  # even the first model: fail closed
    assert f"directional: {CONTRACT_DOWN['name']}" in refused.reason
    tags = MlflowClient(cfg.tracking.uri).get_model_version(cfg.model_name, "1").tags
    assert tags["rayops.gate.passed"] == "false" and tags["rayops.gate.checks"].startswith(
        "failed: directional"
    )
    assert tracking.alias_or_none(cfg.tracking, cfg.model_name, "champion") is None
    artifacts = {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run_id, "checks")}
    assert artifacts == {"checks/checks.xml", "checks/checks.md"}

    config = tmp_path / "strict.yaml"
    config.write_text(yaml.safe_dump(strict.model_dump(mode="json", by_alias=True)))
    junit = tmp_path / "out" / "checks.xml"
    with pytest.raises(SystemExit) as failing:
        main(["check", str(config), "--model", f"{cfg.model_name}@1", "--junit", str(junit)])
    assert failing.value.code == 1
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "1" and suite.get("tests") == "1"
    assert suite.find("testcase/failure") is not None
    assert "FAIL  directional: a two-year contract churns less" in capsys.readouterr().out

    config.write_text(
        yaml.safe_dump(
            cfg.with_overrides({"checks": {"directional": [SUPPORT_UP]}}).model_dump(
                mode="json", by_alias=True
            )
        )
    )
    with pytest.raises(SystemExit) as passing:
        main(["check", str(config), "--report", str(tmp_path / "out" / "checks.md")])
    assert passing.value.code == 0, capsys.readouterr().out
    assert (
        "| ✅ | directional: more calls to support, more churn |"
        in (tmp_path / "out" / "checks.md").read_text()
    )
