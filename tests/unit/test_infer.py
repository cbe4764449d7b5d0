import json

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from rayops.cli import app
from rayops.config import load_config
from rayops.data.infer import infer_column
from rayops.demo import churn
from rayops.storage import resolve


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2", None, "x"] + ["3"] * 96, "integer"),
        (["1.5", "2"], "numeric"),
        (["yes", "No", ""], "boolean"),
        (["2024-01-01", "2024-02-03T10:00:00Z"], "datetime"),
        (["a", "b", "a"], "categorical"),
        ([f"free text {i}" for i in range(500)], "text"),
    ],
)
def test_infer_column_from_text(values, expected):
    assert infer_column(pa.chunked_array([pa.array(values, pa.string())]))["type"] == expected


def test_infer_typed_columns():
    assert infer_column(pa.chunked_array([[1.5]]))["type"] == "numeric"
    assert infer_column(pa.chunked_array([[True]]))["type"] == "boolean"


def test_schema_infer_writes_a_config_that_loads(tmp_path):
    churn.write(churn.generate(3000, 5), resolve(str(tmp_path / "raw")), files=2)
    out = tmp_path / "proposed.yaml"
    result = CliRunner().invoke(
        app,
        [
            "schema",
            "infer",
            str(tmp_path / "raw"),
            "--label",
            "churned",
            "--name",
            "churn",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    types = {n: s.type for n, s in cfg.data.columns.items()}
    assert types["age"] == "integer" and types["monthly_charges"] == "numeric"
    assert types["contract"] == "categorical" and types["paperless_billing"] == "boolean"
    assert cfg.data.exclude == ["customer_id"] and cfg.data.task == "classification"
    assert cfg.data.columns["churned"].nullable is False
    # checks proposed, commented out: a slice floor per low-cardinality categorical
    proposed = out.read_text().split("# checks:\n", 1)[1]
    assert "#     - {column: region, relative_floor: 0.8}" in proposed
    assert "column: contract" in proposed and "customer_id" not in proposed  # excluded
    kept = yaml.safe_load(
        "checks:\n"
        + "\n".join(line[2:] for line in proposed.splitlines() if line.startswith("#   "))
    )
    assert load_config(out, [f"checks={json.dumps(kept['checks'])}"]).checks.slices


def test_schema_infer_with_an_unknown_label_names_the_columns(tmp_path):
    from tests.unit.test_cli import _rayops

    churn.write(churn.generate(200, 5), resolve(str(tmp_path / "raw")), files=1)
    result = _rayops("schema", "infer", str(tmp_path / "raw"), "--label", "churn")
    assert result.returncode == 2
    assert "--label 'churn' is not a column" in result.stderr
    assert "churned" in result.stderr and "customer_id" in result.stderr
    assert "Traceback" not in result.stderr
