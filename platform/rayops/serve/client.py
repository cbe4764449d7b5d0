"""A small client for ``rayops predict``: records from a file, predictions as JSON lines.
A file that cannot be read, a URL that is not one and a server that cannot be reached end
the command in one line; a 503 or a refused connection is retried with backoff."""

import json
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from rayops.data.record_files import reading
from rayops.errors import ServeError

logger = logging.getLogger(__name__)

ATTEMPTS = 5  # per chunk, for a 503 (overloaded, or starting) or a refused connection
BACKOFF_S = 1.0  # doubled each time: about 15 s in all


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records from CSV (empty cells are nulls), JSON Lines or a JSON array; a DataError
    naming the file when it cannot be read as one."""
    with reading(path, path.suffix or "JSON Lines", "a .csv, .jsonl or .json file"):
        if path.suffix == ".csv":
            frame = pd.read_csv(path, keep_default_na=True)
            return [
                {k: (None if pd.isna(v) else v) for k, v in row.items()}
                for row in frame.astype(object).to_dict(orient="records")
            ]
        text = path.read_text()
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _checked_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServeError(f"--url {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
    return url.rstrip("/")


def _post(url: str, body: dict[str, Any], headers: dict[str, str], what: str) -> requests.Response:
    """One chunk, retried on a 503 or a refused connection with backoff."""
    wait = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = requests.post(url, json=body, headers=headers, timeout=60)
        except requests.ConnectionError as exc:
            if attempt == ATTEMPTS:
                raise ServeError(
                    f"{what}: cannot reach {url} after {ATTEMPTS} attempts: {type(exc).__name__}"
                ) from None
        except requests.Timeout:
            raise ServeError(f"{what}: {url} did not answer within 60 s") from None
        else:
            if response.status_code != 503 or attempt == ATTEMPTS:
                return response
        logger.info("%s: %s not ready, trying again in %.0f s", what, url, wait)
        time.sleep(wait)
        wait *= 2
    raise AssertionError("unreachable")


def predict_file(
    path: Path, url: str, chunk: int, token_env: str | None
) -> Iterator[tuple[list[str], int, int]]:
    """POST the file's records in chunks; per chunk, one JSON line per prediction (in input
    order), the records answered so far and the records in all, so that the caller writes
    each chunk as it arrives: a chunk that fails ends the file after what was answered."""
    headers = {}
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ServeError(f"--token-env {token_env!r}: the variable is unset or empty")
        headers["Authorization"] = f"Bearer {token}"
    endpoint = f"{_checked_url(url)}/predict"
    records = read_records(path)
    for start in range(0, len(records), chunk):
        body = {"records": records[start : start + chunk]}
        what = f"records {start}-{start + len(body['records']) - 1}"
        response = _post(endpoint, body, headers, what)
        if response.status_code != 200:
            raise ServeError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
        lines = [json.dumps(p) for p in response.json()["predictions"]]
        yield lines, start + len(lines), len(records)
