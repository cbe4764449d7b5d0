"""The GitHub Actions workflows parse, run what they say (the Makefile's targets, rayops
commands that exist, configs that are in the repository) and pass ``actionlint`` where it
is installed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rayops.cli import app

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _load(path: Path) -> dict:
    flow = yaml.safe_load(path.read_text())
    flow["on"] = flow.pop(True, flow.get("on"))  # YAML 1.1 reads a bare `on` as true
    return flow


def _runs(flow: dict) -> list[str]:
    return [step["run"] for job in flow["jobs"].values() for step in job["steps"] if "run" in step]


def test_a_pull_request_lints_tests_trains_checks_and_reports():
    flow = _load(ROOT / ".github" / "workflows" / "pull-request.yml")
    assert "pull_request" in flow["on"]
    fast, check = flow["jobs"]["lint-and-fast-tests"], flow["jobs"]["train-and-check"]
    assert check["needs"] == "lint-and-fast-tests"
    assert any("make test-fast" in s.get("run", "") for s in fast["steps"])
    runs = " ".join(s.get("run", "") for s in check["steps"])
    assert "rayops demo --rows" in runs and "rayops submit pipeline" in runs
    assert "rayops check jobs/configs/churn.yaml --junit reports/checks.xml" in runs
    assert "gh pr comment" in runs
    uploads = [s for s in check["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["if"] == "always()"


def test_a_merge_to_main_tests_builds_pushes_and_submits():
    flow = _load(ROOT / ".github" / "workflows" / "main.yml")
    assert flow["on"]["push"]["branches"] == ["main"]
    jobs = flow["jobs"]
    assert jobs["image"]["needs"] == "test" and jobs["deploy"]["needs"] == "image"
    assert any(".ci/run" in r for r in _runs({"jobs": {"t": jobs["test"]}}))
    assert any("docker push" in r for r in _runs({"jobs": {"i": jobs["image"]}}))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_command_a_workflow_runs_exists(path):
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    for run in _runs(_load(path)):
        for command in re.findall(r"\.venv/bin/rayops ([a-z-]+)", run):
            assert command in commands, f"{path.name}: rayops {command}"
        for target in re.findall(r"\bmake ([a-z-]+)", run):
            assert target in targets, f"{path.name}: make {target}"
        for config in re.findall(r"(jobs/configs/[\w.-]+\.yaml)", run):
            assert (ROOT / config).exists(), f"{path.name}: {config}"


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not installed")
def test_actionlint_finds_nothing():
    done = subprocess.run(
        ["actionlint", *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
