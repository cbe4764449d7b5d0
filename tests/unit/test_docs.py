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


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
STOP = {"&&", "||", "|", ";", ">", ">>", "2>&1", "&", ")"}


def _documented_rayops_commands() -> list[tuple[str, list[str]]]:
    """Every ``rayops …`` command line in the README's and docs' shell blocks and inline code
    (``where``, the arguments after ``rayops``), up to the first shell operator."""
    import re
    import shlex

    found = []
    for page in DOC_FILES:
        text = page.read_text()
        where = str(page.relative_to(ROOT))
        chunks = [
            line
            for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
            for line in block.replace("\\\n", " ").splitlines()
            if "rayops " in line
        ]
        chunks += [" ".join(span.split()) for span in re.findall(r"(?<!`)`(rayops [^`]+)`", text)]
        for chunk in chunks:
            lexer = shlex.shlex(chunk, posix=True, punctuation_chars="|&;>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            try:
                words = list(lexer)
            except ValueError as exc:
                raise AssertionError(f"{where}: {chunk!r}: {exc}") from None
            for start, word in enumerate(words):
                if word in ("rayops", ".venv/bin/rayops"):
                    argv = []
                    for arg in words[start + 1 :]:
                        if arg in STOP or arg.startswith(("2>", ">")):
                            break
                        argv.append(arg)
                    found.append((where, argv))
    return found


def test_every_documented_rayops_command_exists_with_the_options_it_shows():
    """Each ``rayops`` line in the README and the docs names a command that exists, only
    options that command has, and ``--set`` keys the config has (loaded when the line names
    a config in the repository), so a renamed option or command cannot leave the docs behind.
    Placeholders in capitals (CONFIG, FILE) and ``...`` stand for a value."""
    import typer

    from rayops.cli import app
    from rayops.config import load_config

    root = typer.main.get_command(app)
    documented = _documented_rayops_commands()
    assert len(documented) > 80, len(documented)
    problems = []
    for where, argv in documented:
        line = f"{where}: rayops {' '.join(argv)}"
        command, args = root, list(argv)
        while hasattr(command, "commands") and args and not args[0].startswith("-"):
            if args[0] not in command.commands:
                if args[0] not in ("COMMAND", "STAGE"):
                    problems.append(f"{line}: no command {args[0]!r}")
                command = None
                break
            command = command.commands[args.pop(0)]
        if command is None:
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        options |= {"--help"} | (
            {"--install-completion", "--show-completion"} if command is root else set()
        )
        overrides = []
        for i, arg in enumerate(args):
            if arg.startswith("--") and arg.split("=")[0] not in options:
                problems.append(f"{line}: {arg.split('=')[0]} is not an option of this command")
            if arg == "--set" and i + 1 < len(args) and "=" in args[i + 1]:
                overrides.append(args[i + 1])
        configs = [a for a in args if a.endswith(".yaml") and (ROOT / a).is_file()]
        if overrides and configs:
            load_config(ROOT / configs[0], overrides, base_dir=ROOT)  # ConfigError names the key
    assert not problems, "\n".join(problems)


def _merged(base: dict, snippet: dict) -> dict:
    """``base`` with each of ``snippet``'s sections updated key by key (a key's value,
    such as a search space or a column list, replaced whole)."""
    return {
        **base,
        **{k: {**base.get(k, {}), **v} if isinstance(v, dict) else v for k, v in snippet.items()},
    }


def test_every_config_snippet_in_the_docs_is_a_valid_config():
    """Each YAML block of the docs is a part of a pipeline config: on top of the shipped
    config of its workload (a ``data:`` section with its own columns stands for a whole
    pipeline) it validates, so a renamed key or a refused value cannot stay in the docs."""
    import re

    import yaml

    from rayops.config import validate_config
    from rayops.demo import config_path

    snippets = [
        (str(page.relative_to(ROOT)), yaml.safe_load(block))
        for page in DOC_FILES
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)
    ]
    assert len(snippets) >= 7, snippets
    shipped = {
        workload: yaml.safe_load(config_path(name).read_text())
        for workload, name in (
            ("tabular", "churn"),
            ("forecasting", "demand"),
            ("recommendation", "watching"),
        )
    }
    for where, snippet in snippets:
        task = snippet.get("data", {}).get("task", "classification")
        workload = task if task in shipped else "tabular"
        if "columns" in snippet.get("data", {}) and workload == "tabular":
            raw = {"name": "doc", **snippet}  # a pipeline of its own
        else:
            raw = _merged(shipped[workload], snippet)
        try:
            validate_config(raw, where)
        except Exception as exc:
            raise AssertionError(f"{where}: {snippet}\n{exc}") from None
