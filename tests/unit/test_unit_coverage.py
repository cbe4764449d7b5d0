"""``--unit-coverage`` (tests/unit_coverage.py) on a project of three functions: what the
unit tests and the test modules' imports run is covered, what only an integration test
runs is not, with two xdist workers as `make test` runs it."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_unit_tests_count_towards_the_figure(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.coverage.run]\nsource = ["mod"]\nparallel = true\n[tool.pytest.ini_options]\n'
    )
    (tmp_path / "mod.py").write_text(
        textwrap.dedent(
            """\
            def by_unit():
                return 1
            def by_integration():
                return 2
            def by_nobody():
                return 3
            """
        )
    )
    (tmp_path / "conftest.py").write_text(
        "from tests.unit_coverage import pytest_addoption, pytest_configure  # noqa: F401\n"
    )
    for kind, call in (("unit", "by_unit"), ("integration", "by_integration")):
        folder = tmp_path / "tests" / kind
        folder.mkdir(parents=True)
        (folder / f"test_{kind}.py").write_text(
            f"import mod\n\ndef test_{kind}():\n    assert mod.{call}()\n"
        )
    # not the enclosing run's coverage (its unit tests run with these set)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--unit-coverage"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
    # 6 statements: the 3 defs (imported while collecting) and by_unit's body run, 2 do not
    assert re.search(r"mod.py\s+6\s+2\s+67%", done.stdout), done.stdout
    assert "unit-test coverage: 67%" in done.stdout, done.stdout
    assert not list(tmp_path.glob(".coverage.*")), "the workers' data files are combined"
