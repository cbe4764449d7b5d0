"""A local file of records that a user names on the command line (``rayops predict``,
``rayops feedback``): what can be wrong with it, said in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rayops.errors import DataError


@contextlib.contextmanager
def reading(path: Path, kind: str, expected: str) -> Iterator[None]:
    """Around the read of ``path``: a file that is missing, a folder (``expected`` says
    what to give instead), not UTF-8, or not ``kind`` records (pandas' and pyarrow's
    parse errors are ValueErrors) ends in a DataError naming it."""
    if not path.exists():
        raise DataError(f"{str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder: give {expected}")
    try:
        yield
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{str(path)!r} is not {kind} records: {str(exc)[:300]}") from None
