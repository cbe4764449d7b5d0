import subprocess
import sys

import pytest


def _rayops(*args: str) -> subprocess.CompletedProcess:
    code = "from rayops.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_invalid_config_fails_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {label: y, task: classification, columns: {y: {type: texty}}}\n")
    result = _rayops("validate", str(bad))
    assert result.returncode == 2
    assert "data.columns.y.type" in result.stderr and "'texty'" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_prints_defaults(tmp_path):
    from rayops.demo import config_path

    result = _rayops("validate", str(config_path()), "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert '"epochs": 2' in result.stdout and '"host": "127.0.0.1"' in result.stdout


VERBS = (
    "validate",
    "ingest",
    "train",
    "tune",
    "deploy",
    "promote",
    "rollback",
    "predict",
    "run",
    "demo",
    "quarantine",
    "schema",
    "k8s",
    "simulated-cluster",
    "submit",
    "monitor",
    "feedback",
    "operate",
    "check",
)


def test_help_lists_every_verb_and_each_verb_has_help():
    import typer
    from typer.testing import CliRunner

    from rayops.cli import app

    result = _rayops("--help")
    assert result.returncode == 0, result.stderr
    assert set(typer.main.get_command(app).commands) == set(VERBS)  # no verb untested
    assert all(f"│ {verb} " in result.stdout for verb in VERBS), result.stdout
    runner = CliRunner()
    for verb in VERBS:
        verb_help = runner.invoke(app, [verb, "--help"])
        assert verb_help.exit_code == 0, (verb, verb_help.output)
        assert f"Usage: rayops {verb}" in verb_help.output.replace("root ", "rayops ")


def _config_with(tmp_path, **sections) -> str:
    import yaml

    from rayops.config import load_config
    from rayops.demo import config_path

    raw = load_config(config_path()).model_dump(mode="json")
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_an_object_store_that_is_down_ends_the_command_in_one_line(tmp_path):
    from tests.helpers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    config = _config_with(tmp_path, storage={"root": "s3://lake/rayops", "endpoint_url": endpoint})
    result = _rayops("ingest", config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: cannot create the bucket of s3://lake/rayops")
    assert f"on endpoint {endpoint}" in lines[0]


def test_a_tracking_server_that_is_down_ends_the_command_in_one_line(tmp_path):
    from tests.helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    config = _config_with(tmp_path, storage={"root": str(tmp_path / "lake")}, tracking={"uri": uri})
    result = _rayops("train", config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: MLflow at {uri} does not answer")
    assert len(result.stderr.strip().splitlines()) == 1


# Each job with an option of another stage's: refused, not silently ignored.
FOREIGN = {
    "ingest": "--cycles=3",
    "train": "--watch",
    "tune": "--cycles=3",
    "deploy": "--resume",
    "operate": "--dataset-version=2",
    "pipeline": "--resume",
}


def test_each_job_runs_its_stage_and_rejects_options_that_are_not_its_own(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    import pytest

    jobs = Path(__file__).parents[2] / "jobs"
    assert {p.stem for p in jobs.glob("*.py")} == set(FOREIGN)  # no job untested
    for job, option in FOREIGN.items():
        stage = "run" if job == "pipeline" else job
        monkeypatch.setattr(sys, "argv", [f"jobs/{job}.py", "pipeline.yaml", option])
        with pytest.raises(SystemExit) as refused:
            runpy.run_path(str(jobs / f"{job}.py"), run_name="__main__")
        assert refused.value.code == 2, job
        err = capsys.readouterr().err
        assert f"Usage: rayops {stage} " in err and "No such option" in err, (job, err)
        assert option.split("=")[0] in err, (job, err)


def test_demo_names_the_workloads_it_has_and_the_forecasting_config_loads():
    from typer.testing import CliRunner

    from rayops.cli import app
    from rayops.config import load_config
    from rayops.demo import config_path

    result = CliRunner().invoke(app, ["demo", "--workload", "weather"])
    assert result.exit_code == 2
    shown = " ".join(result.output.replace("│", " ").split())  # unboxed, unwrapped
    assert "'weather'; use one of classification, forecasting, recommendation" in shown
    refused = CliRunner().invoke(app, ["demo", "--workload", "forecasting", "--operate"])
    assert refused.exit_code != 0  # before any data is written or Ray starts
    assert "--operate runs on the churn demo, not forecasting" in str(refused.exception)
    cfg = load_config(config_path("demand"))
    assert cfg.data.task == "forecasting" and cfg.target_metric == ("valid_mae", "min")
    assert cfg.data.forecast.lookback == 168 and cfg.tune.enabled
    cfg = load_config(config_path("watching"))
    assert cfg.data.task == "recommendation" and cfg.target_metric == ("valid_ndcg_10", "max")


def test_version_is_printed():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from rayops.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rayops {version('rayops')}"


def test_bad_files_urls_and_a_server_that_is_down_end_in_one_line(tmp_path, capsys, monkeypatch):
    from rayops.cli import main
    from rayops.serve import client
    from tests.helpers import free_port

    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    records = tmp_path / "r.csv"
    records.write_text("a,b\n1,2\n")
    (tmp_path / "latin.jsonl").write_bytes(b'{"a": "\xe9"}\n')
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    down = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["predict", str(tmp_path / "missing.csv"), "--url", down], "does not exist"),
        (["predict", str(tmp_path), "--url", down], "is a folder"),
        (["predict", str(tmp_path / "latin.jsonl"), "--url", down], "is not UTF-8 text"),
        (["predict", str(records), "--url", "127.0.0.1:8000"], "is not an http(s) URL"),
        (["predict", str(records), "--url", down], "cannot reach"),
        (["validate", str(tmp_path)], "is a folder"),
        (["validate", str(tmp_path / "bad.yaml")], "is not UTF-8 text"),
    ]
    for args, said in cases:
        with pytest.raises(SystemExit) as ended:
            main(args)
        err = capsys.readouterr().err
        assert ended.value.code == 2 and said in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_shell_completion_is_there_to_install():
    # the shell is read from the parent process: bash here, whatever runs the tests (a
    # second command keeps bash from replacing itself with the first)
    shown = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m rayops --show-completion; exit $?"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "complete" in shown.stdout, shown.stderr
