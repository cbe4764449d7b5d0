"""``pytest --unit-coverage``: the unit tests' coverage of ``platform/rayops``, measured in
the same run as the integration tests.

pytest-cov traces every test; tracing the integration tests makes them about a third
slower (``make coverage`` does that), and running the unit tests as a run of their own
leaves a core idle while the last module of each run finishes. Here each process
(an xdist worker, or the only one) traces while it imports the test modules and while a
unit test runs (subprocesses it starts included, through coverage's ``.pth`` hook and
``COVERAGE_PROCESS_START``), and not otherwise; the process that reports combines the data
files and prints the figure after the tests."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import coverage
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--unit-coverage",
        action="store_true",
        help="print the unit tests' coverage of platform/rayops (tests/unit_coverage.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--unit-coverage"):
        config.pluginmanager.register(UnitCoverage(config), "rayops-unit-coverage")


def is_unit(item: pytest.Item) -> bool:
    """A test under tests/unit (no Ray cluster, no services)."""
    return "unit" in item.path.parts


class UnitCoverage:
    """Registered when ``--unit-coverage`` is given (``tests/conftest.py`` imports the hooks
    above)."""

    def __init__(self, config: pytest.Config) -> None:
        root = Path(config.rootpath)
        self.settings, self.data_file = str(root / "pyproject.toml"), str(root / ".coverage")
        # What coverage's .pth hook reads in a subprocess: start, with these settings
        # (parallel: a data file of its own), writing beside ours.
        self.subprocess_env = {
            "COVERAGE_PROCESS_START": self.settings,
            "COVERAGE_FILE": self.data_file,
        }
        self.worker = hasattr(config, "workerinput")  # an xdist worker, not the controller
        runs_tests = self.worker or config.getoption("numprocesses", None) in (None, 0)
        if not self.worker:
            coverage.Coverage(data_file=self.data_file).erase()
        self.cov: coverage.Coverage | None = None
        if runs_tests:
            self.cov = coverage.Coverage(
                data_file=self.data_file, data_suffix=True, config_file=self.settings
            )
            self.cov.start()  # the test modules' imports: rayops' module-level lines

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.cov is not None:
            self.cov.stop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        if self.cov is None or not is_unit(item):
            return (yield)
        os.environ.update(self.subprocess_env)
        self.cov.start()
        try:
            return (yield)
        finally:
            self.cov.stop()
            for name in self.subprocess_env:
                os.environ.pop(name, None)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.cov is not None:
            self.cov.save()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.worker:
            return
        combined = coverage.Coverage(data_file=self.data_file, config_file=self.settings)
        terminalreporter.write_sep("-", "coverage of platform/rayops by the unit tests")
        try:
            combined.combine(keep=False, strict=True)
            combined.save()
            table = io.StringIO()
            total = combined.report(skip_covered=True, file=table)
        except coverage.exceptions.CoverageException as exc:  # no unit test ran
            terminalreporter.write_line(f"no coverage measured: {exc}")
            return
        terminalreporter.write(table.getvalue())
        terminalreporter.write_line(f"unit-test coverage: {total:.0f}%")
