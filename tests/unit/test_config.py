from pathlib import Path

import pytest

from rayops.config import load_config, parse_overrides, validate_config
from rayops.demo import config_path
from rayops.errors import ConfigError


def _raw() -> dict:
    return {
        "name": "t",
        "data": {
            "label": "y",
            "task": "classification",
            "columns": {"x": {"type": "numeric"}, "y": {"type": "categorical"}},
        },
    }


def test_demo_config_loads_with_absolute_paths():
    cfg = load_config(config_path())
    assert Path(cfg.storage.root).is_absolute()
    assert cfg.tracking.uri.startswith("sqlite:////")
    assert cfg.tracking.artifact_location.endswith("mlflow/artifacts")
    assert "customer_id" not in cfg.data.feature_names
    assert cfg.target_metric == ("valid_f1", "max")


def test_jobs_example_is_the_packaged_demo_config():
    jobs_copy = Path(__file__).parents[2] / "jobs" / "configs" / "churn.yaml"
    assert load_config(jobs_copy) == load_config(config_path())


def test_unknown_key_names_key_and_allowed_keys():
    raw = _raw()
    raw["train"] = {"epochz": 3}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    text = str(err.value)
    assert "train.epochz: unknown key" in text
    assert "epochs" in text and "batch_size" in text


def test_bad_value_names_key_value_and_allowed():
    raw = _raw()
    raw["data"]["task"] = "clasification"
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    text = str(err.value)
    assert "data.task" in text and "'clasification'" in text
    assert "'classification'" in text and "'regression'" in text


def test_label_must_be_declared():
    raw = _raw()
    raw["data"]["label"] = "target"
    with pytest.raises(ConfigError, match="label 'target' is not declared"):
        validate_config(raw)


def test_regression_needs_numeric_label():
    raw = _raw()
    raw["data"]["task"] = "regression"
    with pytest.raises(ConfigError, match="regression.*numeric"):
        validate_config(raw)


def test_min_above_max_rejected():
    raw = _raw()
    raw["data"]["columns"]["x"] = {"type": "numeric", "min": 5, "max": 1}
    with pytest.raises(ConfigError, match=r"min \(5.0\) is greater than max \(1.0\)"):
        validate_config(raw)


def test_search_space_key_must_be_tunable():
    raw = _raw()
    raw["tune"] = {"search_space": {"train.lr": {"type": "uniform", "low": 0, "high": 1}}}
    with pytest.raises(ConfigError, match="'train.lr' is not a tunable.*train.learning_rate"):
        validate_config(raw)


def test_search_space_bounds_and_discriminator():
    raw = _raw()
    raw["tune"] = {"search_space": {"train.epochs": {"type": "randint", "low": 5, "high": 2}}}
    with pytest.raises(ConfigError, match="low"):
        validate_config(raw)
    raw["tune"] = {"search_space": {"train.epochs": {"type": "normal"}}}
    with pytest.raises(ConfigError, match="train.epochs"):
        validate_config(raw)


def test_overrides_are_typed_and_revalidated():
    cfg = validate_config(_raw()).with_overrides({"train.epochs": 2, "model.hidden_sizes": [8]})
    assert cfg.train.epochs == 2 and cfg.model.hidden_sizes == [8]
    assert parse_overrides(["train.use_gpu=true", "train.learning_rate=0.01"]) == {
        "train.use_gpu": True,
        "train.learning_rate": 0.01,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs"):
        validate_config(_raw()).with_overrides({"train.epochs": 0})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_s3_root_needs_bucket_and_endpoint_scheme():
    raw = _raw()
    raw["storage"] = {"root": "s3://"}
    with pytest.raises(ConfigError, match="needs a bucket"):
        validate_config(raw)
    raw["storage"] = {"root": "s3://b/p", "endpoint_url": "127.0.0.1:9000"}
    with pytest.raises(ConfigError, match="storage.endpoint_url"):
        validate_config(raw)


def test_serve_batch_larger_than_ongoing_requests_rejected():
    raw = _raw()
    raw["serve"] = {"max_batch_size": 128, "max_ongoing_requests": 16}
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        validate_config(raw)


def test_fp16_needs_a_gpu_and_says_so_before_anything_runs():
    raw = _raw()
    raw["train"] = {"precision": "fp16"}
    with pytest.raises(ConfigError, match=r"train: .*precision 'fp16' needs use_gpu: true"):
        validate_config(raw)
    raw["train"] = {"precision": "fp16", "use_gpu": True}
    assert validate_config(raw).train.precision == "fp16"


def test_an_unknown_family_or_plugin_is_named_with_its_key():
    raw = _raw()
    raw["model"] = {"family": "forest"}
    with pytest.raises(
        ConfigError,
        match=r"model.family: 'forest' is not a known family; "
        r"known: bpr, mlp, sasrec, xgboost",
    ):
        validate_config(raw)
    raw["model"] = {"family": "centroid", "plugins": ["no_such_plugin"]}
    with pytest.raises(ConfigError, match=r"model.plugins: cannot import 'no_such_plugin'"):
        validate_config(raw)


def test_grid_search_takes_choices_only():
    raw = _raw()
    raw["tune"] = {
        "search": "grid",
        "search_space": {"train.learning_rate": {"type": "uniform", "low": 0, "high": 1}},
    }
    with pytest.raises(ConfigError, match="grid.*choice"):
        validate_config(raw)


@pytest.mark.parametrize(
    ("rule", "workers", "factor"), [("none", 4, 1.0), ("linear", 4, 4.0), ("sqrt", 4, 2.0)]
)
def test_learning_rate_scaling_rule(rule, workers, factor):
    cfg = validate_config(_raw()).with_overrides(
        {"train.lr_scaling": rule, "train.num_workers": workers}
    )
    assert cfg.train.lr_factor == factor


@pytest.mark.parametrize(
    ("workers", "gpu", "rows", "configured", "expected"),
    [
        (2, False, 160_000, None, 4),  # 312 batches a worker: 78 steps left after 4
        (2, False, 3_200, None, 1),  # the demo's 50 batches: accumulation would leave 12
        (1, False, 160_000, None, 1),  # nothing to all-reduce
        (2, True, 160_000, None, 1),  # NCCL on GPUs: the all-reduce is cheap
        (2, False, 3_200, 3, 3),  # a written value wins
    ],
)
def test_accumulation_defaults_to_4_only_for_several_cpu_workers_with_steps_to_spare(
    workers, gpu, rows, configured, expected
):
    train = (
        validate_config(_raw())
        .with_overrides(
            {
                "train.num_workers": workers,
                "train.use_gpu": gpu,
                "train.accumulate_grad_batches": configured,
            }
        )
        .train
    )
    assert train.accumulation_for(rows) == expected
    resolved = train.model_copy(update={"accumulate_grad_batches": expected})
    assert resolved.lr_factor == pytest.approx((workers * expected) ** 0.5)  # sqrt rule


def test_defaults_are_resolved_like_written_values(tmp_path, monkeypatch):
    """Only name, storage and data: the tracking section's defaults become absolute too."""
    monkeypatch.chdir(tmp_path)
    cfg = validate_config(_raw())
    assert cfg.storage.root == str(tmp_path / "lake")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cfg.tracking.artifact_location == str(tmp_path / "mlflow" / "artifacts")
    spelled = _raw() | {
        "tracking": {"uri": "sqlite:///mlflow/mlflow.db"},
        "storage": {"root": "./lake"},
    }
    assert validate_config(spelled) == cfg


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ({"tune": {"metric": "valid_f2"}}, "'valid_f2'", "tune.metric"),
        ({"gate": {"metric": "valid_rmse"}}, "'valid_rmse'", "gate.metric"),
        ({"gate": {"max_regression": {"recall": 0.1}}}, "'recall'", "gate.max_regression.recall"),
    ],
)
def test_metric_names_are_checked_against_the_task(section, value, key):
    with pytest.raises(ConfigError) as err:
        validate_config(_raw() | section)
    text = str(err.value)
    assert key in text and value in text and "valid_f1" in text and "valid_recall" in text


def test_metric_direction_comes_from_the_metric():
    cfg = validate_config(_raw() | {"tune": {"metric": "valid_loss"}})
    assert cfg.target_metric == ("valid_loss", "min")
    assert cfg.gate_metric == ("valid_loss", "min")  # the gate follows the target metric
    gated = validate_config(_raw() | {"gate": {"metric": "valid_recall"}})
    assert gated.gate_metric == ("valid_recall", "max")
    assert gated.target_metric == ("valid_f1", "max")
    with pytest.raises(ConfigError, match="tune.mode 'max' contradicts.*'valid_loss'"):
        validate_config(_raw() | {"tune": {"metric": "valid_loss", "mode": "max"}})


def test_gate_thresholds_are_validated():
    with pytest.raises(ConfigError, match="gate.min_improvement"):
        validate_config(_raw() | {"gate": {"min_improvement": -0.1}})
    with pytest.raises(ConfigError, match="gate.max_regression.*>= 0"):
        validate_config(_raw() | {"gate": {"max_regression": {"valid_recall": -1}}})


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.3.7", "::", "serve.internal"])
def test_serving_beyond_loopback_requires_a_bearer_token(host):
    with pytest.raises(
        ConfigError,
        match=rf"serve: .*host '{host}' is reachable from other "
        r"machines: set auth_token_env or auth_token_file",
    ):
        validate_config(_raw() | {"serve": {"host": host}})
    cfg = validate_config(_raw() | {"serve": {"host": host, "auth_token_env": "API_TOKEN"}})
    assert cfg.serve.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_serving_needs_no_token(host):
    assert validate_config(_raw() | {"serve": {"host": host}}).serve.auth_token_env is None


def test_environment_references_are_resolved_where_the_config_loads(tmp_path, monkeypatch):
    import yaml

    raw = _raw()
    raw["tracking"] = {"uri": "http://${RAYOPS_TEST_HEAD}:5000"}
    raw["storage"] = {"root": "s3://${RAYOPS_TEST_BUCKET:-lake}/rayops"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RAYOPS_TEST_HEAD", "10.0.3.7")
    cfg = load_config(path)
    assert cfg.tracking.uri == "http://10.0.3.7:5000"
    assert cfg.storage.root == "s3://lake/rayops"  # the default after :-
    monkeypatch.setenv("RAYOPS_TEST_BUCKET", "team-bucket")
    assert load_config(path).storage.root == "s3://team-bucket/rayops"
    monkeypatch.setenv("RAYOPS_TEST_BUCKET", "")  # set but empty: the shell's :- default too
    assert load_config(path).storage.root == "s3://lake/rayops"
    monkeypatch.delenv("RAYOPS_TEST_HEAD")
    with pytest.raises(ConfigError, match=r"tracking\.uri: .*RAYOPS_TEST_HEAD, which is not set"):
        load_config(path)


def test_the_s3_example_tracks_to_the_heads_server_when_the_head_says_where(monkeypatch):
    example = Path(__file__).parents[2] / "jobs" / "configs" / "churn-s3.yaml"
    monkeypatch.delenv("RAYOPS_MLFLOW_URI", raising=False)
    assert load_config(example).tracking.uri == "http://127.0.0.1:5000"  # a laptop + MinIO
    monkeypatch.setenv("RAYOPS_MLFLOW_URI", "http://10.0.3.7:5000")  # cluster.yaml's head
    assert load_config(example).tracking.uri == "http://10.0.3.7:5000"


def test_relative_paths_inside_a_ray_job_copy_stop_the_job_with_the_key(tmp_path, monkeypatch):
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1a2b"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(
        ConfigError,
        match=r"storage\.root resolves to .*_ray_pkg_1a2b/lake, "
        r"inside Ray's temporary copy.*--base-dir",
    ):
        load_config(config_path())
    base = tmp_path / "checkout"
    cfg = load_config(config_path(), base_dir=base)  # what the job's --base-dir says
    assert cfg.storage.root == str(base / "lake")
    assert cfg.tracking.uri == f"sqlite:///{base}/mlflow/mlflow.db"
    absolute = load_config(
        config_path(), [f"storage.root={tmp_path}/lake", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    )
    assert absolute.storage.root == str(tmp_path / "lake")  # absolute paths are fine


@pytest.mark.parametrize(
    ("source", "fmt", "avro", "match"),
    [
        ("kafka://h:1/t", "parquet", None, "'parquet' is not a message format"),
        ("kinesis://s", "parquet", None, "'parquet' is not a message format"),
        ("raw", "avro", {"schema": "r.avsc"}, "'avro' is a message format of a Kafka or Kinesis"),
        ("kafka://h:1/t", "avro", None, "needs data.avro.schema"),
        ("kafka://h:1/t", "json", {"schema": "r.avsc"}, "data.avro is only for format 'avro'"),
    ],
)
def test_message_formats_fit_their_source(source, fmt, avro, match):
    raw = _raw()
    raw["data"].update({"source": source, "format": fmt}, **({"avro": avro} if avro else {}))
    with pytest.raises(ConfigError, match=match):
        validate_config(raw)
    raw["data"].update({"format": "avro", "avro": {"schema": "r.avsc"}})
    if "://" in source:  # the same source with Avro and its schema is a valid config
        assert validate_config(raw).data.avro.framing == "confluent"


def test_a_check_across_keys_names_them_without_dumping_the_section():
    raw = _raw()
    raw["serve"] = {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    (line,) = [x for x in str(err.value).splitlines() if "min_replicas" in x]
    assert line.strip() == "serve.autoscaling: min_replicas (5) exceeds max_replicas (2)"
    raw = _raw()
    raw["tune"] = {"metric": "valid_rmse"}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert "tune.metric 'valid_rmse' is not a metric of a classification run" in str(err.value)
    assert "{'name'" not in str(err.value)


@pytest.mark.parametrize("written", ["asha", "fifo"])
def test_the_scheduler_can_be_named_alone(written):
    raw = _raw()
    raw["tune"] = {"scheduler": written}
    assert validate_config(raw).tune.scheduler.type == written
