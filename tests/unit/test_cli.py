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
    # each summary is one paragraph rewrapped, not the docstring's line breaks
    assert "the model becomes challenger" in result.stdout, result.stdout
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

    from rayops import cli

    monkeypatch.setattr(cli, "_exit", sys.exit)  # the jobs' hard exit, as SystemExit here
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


BAD_CONFIGS = {
    "missing": ("missing.yaml", None, "does not exist"),
    "folder": ("folder", None, "is a folder"),
    "latin-1": ("latin.yaml", b"name: caf\xe9\n", "is not UTF-8 text"),
    "not YAML": ("broken.yaml", b"name: [unclosed\n", "yaml"),
    "not a mapping": ("list.yaml", b"- a\n- b\n", "expected a mapping"),
    "invalid": ("invalid.yaml", b"name: x\ndata: {task: nonsense}\n", "data.task"),
}


def _argv(command, bad: str, good_file: str) -> list[str]:
    """The command's required arguments, the config among them (argument or --config) bad."""
    names = {"stage": "ingest", "model": "m", "version": "1", "source": good_file}
    args = []
    for param in command.params:
        if param.param_type_name == "argument" and param.required:
            args.append(bad if param.name == "config" else names.get(param.name, good_file))
        elif param.param_type_name == "option" and param.name == "config":
            args += ["--config", bad]
        elif param.param_type_name == "option" and param.required:
            args += [param.opts[0], "registry.example/rayops:1"]
    return args


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_every_command_that_reads_a_config_ends_in_one_line_on_a_bad_one(case, tmp_path, capsys):
    """Fuzz-style: each command given a config that is missing, a folder, not UTF-8, not
    YAML, not a mapping or invalid ends with exit status 2 and one line, no traceback."""
    import typer

    from rayops.cli import app, main
    from rayops.reference import commands

    name, content, said = BAD_CONFIGS[case]
    bad = tmp_path / name
    if content is None and name == "folder":
        bad.mkdir()
    elif content is not None:
        bad.write_bytes(content)
    good_file = tmp_path / "records.csv"
    good_file.write_text("a,b\n1,2\n")
    root = typer.main.get_command(app)
    tried = []
    for full_path, command in commands(root, hidden=True)[1:]:  # [0]: the root
        path = full_path.removeprefix("rayops ")
        argv = _argv(command, str(bad), str(good_file))
        if str(bad) not in argv:
            continue  # reads no config
        tried.append(path)
        with pytest.raises(SystemExit) as ended:
            main([*path.split(), *argv])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert ended.value.code == 2 and "Traceback" not in err, (path, err)
        assert lines[0].startswith("error: ") and said.lower() in err.lower(), (path, err)
        # one line, or for an invalid config one more per invalid setting
        assert len(lines) == 1 or (case == "invalid" and lines[0].endswith("setting(s):"))
    assert {"ingest", "train", "tune", "deploy", "run", "check", "feedback", "k8s"} <= set(tried)
    assert {"promote", "rollback", "submit", "operate", "monitor", "quarantine"} <= set(tried)


@pytest.mark.parametrize(
    ("argv", "job", "blocks"),
    [
        ([], False, True),
        ([], True, False),
        (["--no-block"], False, False),
        (["--block"], True, True),
    ],
)
def test_run_keeps_serving_like_deploy_unless_in_a_job(argv, job, blocks, monkeypatch, tmp_path):
    """`rayops run` serves from a Ray cluster the command owns: it blocks (as `deploy` does)
    unless it runs in a Ray job, whose Serve application outlives it."""
    from types import SimpleNamespace

    from rayops import pipeline
    from rayops.cli import main, stages
    from rayops.config import load_config
    from rayops.demo import config_path
    from rayops.runtime import Output

    cfg = load_config(config_path())
    waited = []
    monkeypatch.setattr(stages, "start", lambda *a: (cfg, Output(False, None)))
    model = SimpleNamespace(summary=lambda: "run r1 on churn/v000001")
    monkeypatch.setattr(
        pipeline,
        "run_pipeline",
        lambda cfg, deploy: SimpleNamespace(model=model, url="http://127.0.0.1:8000"),
    )
    monkeypatch.setattr(stages, "wait_forever", lambda: waited.append(True))
    if job:
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    else:
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    with pytest.raises(SystemExit) as ended:
        main(["run", str(tmp_path / "unused.yaml"), *argv])
    assert ended.value.code == 0
    assert waited == ([True] if blocks else [])


def test_predict_writes_each_answer_as_it_comes_and_keeps_them_when_a_later_one_fails(
    tmp_path, capsys
):
    """A server that answers the first chunk and fails the second: the first chunk's
    predictions are in the output file, with progress on stderr and one line naming both."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rayops.cli import main

    class Handler(BaseHTTPRequestHandler):
        calls = 0

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            Handler.calls += 1
            status = 200 if Handler.calls == 1 else 500
            answer = {"predictions": [{"prediction": r["a"]} for r in body["records"]]}
            data = json.dumps(answer if status == 200 else {"detail": "boom"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    records = tmp_path / "r.csv"
    records.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(SystemExit) as ended:
            main(["predict", str(records), "--url", url, "--chunk", "3", "--output", str(out)])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert ended.value.code == 2
    assert [json.loads(x)["prediction"] for x in out.read_text().splitlines()] == [0, 1, 2]
    assert "predicted 3 of 5 records" in err
    assert "records 3-4: HTTP 500" in err and f"the first 3 predictions are in {out}" in err


def test_unreachable_and_malformed_urls_and_bad_input_files_end_in_one_line(
    tmp_path, capsys, monkeypatch
):
    """Fuzz-style, the other inputs: tracking servers and cluster addresses that are
    malformed or down, and data files that are missing, folders or not UTF-8."""
    from rayops.cli import main
    from rayops.demo import config_path
    from tests.helpers import free_port

    monkeypatch.setenv("RAYOPS_LOG_DIR", str(tmp_path / "logs"))
    down = f"http://127.0.0.1:{free_port()}"
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,b\n\xe9,1\n")
    cfg = str(config_path())
    cases = [
        (["promote", "m", "1", "--tracking-uri", "ftp:/nowhere"], "tracking"),
        (["promote", "m", "1", "--tracking-uri", down], "127.0.0.1"),
        (["rollback", "m", "--tracking-uri", down], "127.0.0.1"),
        (["submit", "ingest", cfg, "--address", "not a url"], "address"),
        (["submit", "ingest", cfg, "--address", down], "127.0.0.1"),
        (["schema", "infer", str(tmp_path / "missing")], "missing"),
        (["schema", "infer", str(latin)], "latin.csv"),
        (["feedback", cfg, str(tmp_path / "missing.csv")], "missing.csv"),
        (["feedback", cfg, str(latin)], "latin.csv"),
    ]
    for args, said in cases:
        with pytest.raises(SystemExit) as ended:
            main(args)
        err = capsys.readouterr().err
        assert ended.value.code == 2, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith("error: ") and said in err, (args, err)
