"""What a command prints: rayops' progress on the console, the libraries' messages in a log
file (unless --verbose)."""

import logging

from rayops.config import load_config
from rayops.demo import config_path
from rayops.runtime import setup_logging
from rayops.train.feed import console_enabled, epoch_line


def test_quiet_mode_sends_library_messages_to_the_log_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYOPS_LOG_DIR", str(tmp_path))
    assert not console_enabled()  # a library process shows no progress
    output = setup_logging(verbose=False)
    logging.getLogger("rayops.train").info("epoch 1/3 ...")
    logging.getLogger("ray.data").info("Starting execution of Dataset")
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables")
    logging.getLogger("ray.serve").warning("Connecting to existing Serve app")
    err = capsys.readouterr().err
    assert err == "epoch 1/3 ...\n"  # our line, as is; nothing of Ray's or MLflow's
    assert output.log_file is not None and output.log_file.parent == tmp_path
    logged = output.log_file.read_text()
    for line in (
        "Starting execution",
        "Creating initial MLflow",
        "existing Serve app",
        "epoch 1/3",
    ):
        assert line in logged
    assert console_enabled()


def test_log_files_are_made_only_when_something_is_said_and_the_oldest_removed(
    tmp_path, monkeypatch
):
    import os

    from rayops.runtime import KEEP_LOGS

    monkeypatch.setenv("RAYOPS_LOG_DIR", str(tmp_path))
    for i in range(KEEP_LOGS + 5):
        old = tmp_path / f"rayops-2026010{i:03d}.log"
        old.write_text("x")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    output = setup_logging(verbose=False)
    assert output.log_file is not None and not output.log_file.exists()  # nothing said yet
    left = sorted(p.name for p in tmp_path.glob("rayops-*.log"))
    assert len(left) == KEEP_LOGS - 1 and "rayops-2026010000.log" not in left
    logging.getLogger("ray.data").info("something")
    assert output.log_file.exists()


def test_verbose_mode_keeps_everything_on_the_console(capsys):
    output = setup_logging(verbose=True)
    assert output.log_file is None
    logging.getLogger("rayops.gate").info("promoted")
    assert capsys.readouterr().err == "promoted\n"


def test_an_epoch_line_shows_the_losses_and_the_metrics_that_matter():
    cfg = load_config(config_path(), ["train.epochs=8"])
    line = epoch_line(
        cfg,
        {
            "epoch": 3,
            "train_loss": 0.41234,
            "valid_loss": 0.39876,
            "valid_f1": 0.66213,
            "valid_accuracy": 0.78111,
            "valid_recall": 0.5,
            "epoch_time_s": 1.27,
        },
    )
    assert line == (
        "epoch 3/8  loss 0.4123 / 0.3988  valid_f1 0.6621  valid_accuracy 0.7811  1.3 s"
    )


JOB = """
import os, signal, sys, time
from rayops.errors import DataError
from rayops.runtime import errors_in_one_line, say_how_to_resume_when_stopped

with errors_in_one_line():
    if sys.argv[1] == "stop":
        say_how_to_resume_when_stopped()
        print("training", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    raise RuntimeError("wrapped") from DataError("no csv files at /lake/raw/churn")
"""


def _job(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", JOB, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_a_failed_job_ends_with_its_reason_on_one_line():
    result = _job("fail")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: no csv files at /lake/raw/churn")


def test_a_stopped_training_job_says_it_is_resumable_and_how():
    stopped = _job("stop", "--config", "c.yaml", env={"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    assert stopped.returncode == 143  # 128 + SIGTERM, as the signal itself would end it
    assert stopped.stderr.strip().splitlines()[-1] == (
        "stopped: the run is resumable; submit it again with --resume: "
        "python -c stop --config c.yaml --resume"
    )
    outside_a_job = _job("stop")  # a terminal's Ctrl-C/kill keeps its usual meaning
    assert outside_a_job.returncode == -15 and "resumable" not in outside_a_job.stderr
