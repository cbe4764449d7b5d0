"""What a check run found: one result per declared check, and the reports made of them
(a line per check on the console, JUnit XML for CI systems, Markdown for a pull request)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr


@dataclass(frozen=True)
class CheckResult:
    """One check: passed or not, why in one line, and example records that failed it."""

    kind: str  # minimum | invariance | directional | slices | data
    name: str
    passed: bool
    detail: str
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.kind}: {self.name}"


@dataclass(frozen=True)
class CheckReport:
    """Every check of one model on one dataset version."""

    model: str  # NAME vN
    dataset: str
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        failed = self.failed
        if not failed:
            return f"all {len(self.results)} check(s) passed"
        return f"{len(failed)} of {len(self.results)} check(s) failed: " + "; ".join(
            f"{r.title} ({r.detail})" for r in failed
        )

    def lines(self) -> list[str]:
        """The console's: one line per check, then the failing examples indented."""
        out = [f"checks of {self.model} on {self.dataset}:"]
        for r in self.results:
            out.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.title}: {r.detail}")
            out += [f"        e.g. {_short(e)}" for e in ([] if r.passed else r.examples)]
        out.append(("PASSED: " if self.passed else "FAILED: ") + self.summary())
        return out

    def junit(self) -> str:
        """JUnit XML: a test suite of one test case per check (failures with examples)."""
        cases = []
        for r in self.results:
            body = (
                ""
                if r.passed
                else (
                    f"<failure message={quoteattr(r.detail)}>"
                    + escape("\n".join([r.detail, *(_short(e) for e in r.examples)]))
                    + "</failure>"
                )
            )
            cases.append(
                f"  <testcase classname={quoteattr('rayops.checks.' + r.kind)} "
                f'name={quoteattr(r.name)} time="0">{body}</testcase>'
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<testsuite name={quoteattr('rayops check ' + self.model)} "
            f'tests="{len(self.results)}" failures="{len(self.failed)}" errors="0">\n'
            + "\n".join(cases)
            + "\n</testsuite>\n"
        )

    def markdown(self) -> str:
        """A report for a pull request: a table of the checks, then each failure's
        examples."""
        head = "passed" if self.passed else "**failed**"
        out = [
            f"### rayops check: {self.model} on {self.dataset}: {head}",
            "",
            f"{self.summary()}",
            "",
            "| | check | result |",
            "| --- | --- | --- |",
        ]
        out += [
            f"| {'✅' if r.passed else '❌'} | {r.title} | {_cell(r.detail)} |"
            for r in self.results
        ]
        for r in self.failed:
            if r.examples:
                out += [
                    "",
                    f"<details><summary>{escape(r.title)}: examples</summary>",
                    "",
                    "```json",
                    *(json.dumps(e, default=str) for e in r.examples),
                    "```",
                    "</details>",
                ]
        return "\n".join(out) + "\n"


def _short(example: dict[str, Any]) -> str:
    text = json.dumps(example, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
