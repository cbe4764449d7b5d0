"""The README's shell blocks marked `<!-- runnable` run as written, in bash, in a folder
laid out like a clone after `make demo` (its jobs/ and configs, .venv, the demo's raw CSV
exports in ./lake/raw/churn). The jobs session is `test_jobs.py`'s: it needs a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from rayops.config import load_config
from rayops.data.ingest import file_source
from tests.helpers import write_demo_data
from tests.integration.conftest import BIN, REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARK = "<!-- runnable"


def runnable_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = [part.split("```bash\n", 1)[1].split("```", 1)[0] for part in text.split(MARK)[1:]]
    assert blocks, "README.md has no block marked runnable"
    return blocks


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_a_runnable_readme_block_runs_as_written(index, tmp_path):
    folder = tmp_path / "rayops"
    shutil.copytree(REPO / "jobs", folder / "jobs", symlinks=False)
    (folder / ".venv").symlink_to(BIN.parent)
    demo = load_config(folder / "jobs" / "configs" / "churn.yaml", base_dir=folder)
    write_demo_data(file_source(demo).location, rows=2000, files=2)  # ./lake/raw/churn
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env |= {"RAY_ADDRESS": "local", "RAYOPS_LOG_DIR": str(tmp_path / "logs")}
    block = runnable_blocks()[index]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    if "schema infer" in block:  # bring your own data: a version, its quarantine, a model
        assert (folder / "my-churn.yaml").exists()
        assert re.search(r"committed my-churn/v000001: \d+ train \+ \d+ valid rows", output), output
        assert "churn-classifier" not in output  # the inferred config names its own model
        assert re.search(r"my-churn v1 .* (promoted to champion|champion)", output), output
