"""The docs site builds with `mkdocs build --strict` (a broken link, a missing page or a
snippet that moved fails it), and its reference pages hold every command and config key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayops.config.pipeline import PipelineConfig
from rayops.reference import cli_reference, config_reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_site_builds_strict_with_every_page_of_the_nav(site):
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        name = str(page.relative_to(ROOT / "docs"))
        assert name in nav, f"docs/{name} is not in mkdocs.yml's nav"
        built = site / name.removesuffix(".md").removesuffix("index") / "index.html"
        assert built.exists(), built


def test_the_reference_pages_are_generated_from_the_code(site):
    config_page = (site / "reference" / "config" / "index.html").read_text()
    for section in PipelineConfig.model_fields:
        assert f"<code>{section}</code>" in config_page, section
    assert "<code>serve.autoscaling.max_replicas</code>" in config_page
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for command in (
        "ingest",
        "train",
        "tune",
        "deploy",
        "run",
        "predict",
        "monitor",
        "feedback",
        "operate",
        "check",
        "schema infer",
        "quarantine",
        "k8s",
    ):
        assert f"rayops {command}</code>" in cli_page, command
    assert "`--token-env <str>` | Environment variable holding the bearer token." in cli_reference()


def test_the_config_reference_shows_types_and_defaults():
    text = config_reference()
    assert "| `train.num_workers` | int | `2` |" in text
    assert "| `tune.search` | `random` / `grid` / `optuna` | `random` |" in text
    assert "| `name` | str |  | **required.**" in text
