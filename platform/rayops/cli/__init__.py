"""The ``rayops`` command line: parses arguments and calls library functions, nothing more.

One command per stage (``cli.stages``), the registry's aliases (``cli.registry``), data and
traffic (``cli.observe``) and clusters (``cli.cluster``). ``python -m rayops STAGE ...`` and
``jobs/STAGE.py`` run the same commands.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import typer

from rayops.cli import cluster, observe, registry, stages  # noqa: F401  (they add commands)
from rayops.cli.common import app
from rayops.runtime import errors_in_one_line

__all__ = ["app", "console", "main"]


def _summaries(typer_app: typer.Typer) -> None:
    """Each command's line in ``rayops --help``: its docstring's first paragraph on one
    line (Typer's rich help keeps a docstring's line breaks there, mid-sentence)."""
    for info in typer_app.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            first = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0]
            info.short_help = " ".join(first.split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _summaries(group.typer_instance)


_summaries(app)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (``argv``: the arguments, default the process's): library errors
    become one clear line and exit code 2; ends with SystemExit."""
    with errors_in_one_line():
        app(args=list(argv) if argv is not None else None, prog_name="rayops")


def console(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``rayops`` executable, ``python -m rayops`` and the jobs: :func:`main`, then an
    exit that skips C++ static destructors. pyarrow's thread pool, torn down there beside
    deltalake's runtime, sometimes aborts ("terminate called without an active
    exception", status 134) after a command has done its work; Python's own shutdown
    (threads joined, atexit handlers: Ray's shutdown, log files) still runs first."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    _exit(code)


def _exit(code: int) -> NoReturn:
    # What the interpreter does first when it exits: threading's exit hooks (thread pool
    # executors told to stop), then the other threads joined; then the atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
