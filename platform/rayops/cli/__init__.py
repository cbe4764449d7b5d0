"""The ``rayops`` command line: parses arguments and calls library functions, nothing more.

One command per stage (``cli.stages``), the registry's aliases (``cli.registry``), data and
traffic (``cli.observe``) and clusters (``cli.cluster``). ``python -m rayops STAGE ...`` and
``jobs/STAGE.py`` run the same commands.
"""

from __future__ import annotations

from collections.abc import Sequence

from rayops.cli import cluster, observe, registry, stages  # noqa: F401  (they add commands)
from rayops.cli.common import app
from rayops.runtime import errors_in_one_line

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``argv``: the arguments, default the process's): library
    errors become one clear line and exit code 2."""
    with errors_in_one_line():
        app(args=list(argv) if argv is not None else None, prog_name="rayops")
