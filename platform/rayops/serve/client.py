"""A small client for ``rayops predict``: records from a file, predictions as JSON lines.
The records are typed by the served model's input schema (``GET /metadata``) the way
ingest reads raw files (``yes``/``no`` booleans, ``NA`` nulls), and columns that are not
inputs (an id, the label) are left out, saying which. A file that cannot be read, a URL
that is not one and a server that cannot be reached end the command in one line; a 503 or
a refused connection is retried with backoff."""

import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from rayops.data.record_files import reading
from rayops.data.validate import BOOLEAN_WORDS, NULL_STRINGS, NUMBER_RE
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


def _send(
    url: str, body: dict[str, Any] | None, headers: dict[str, str], what: str
) -> requests.Response:
    """One request (a POST of ``body``, or a GET), retried on a 503 or a refused
    connection with backoff."""
    wait = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if body is None:
                response = requests.get(url, headers=headers, timeout=60)
            else:
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
    path: Path,
    url: str,
    chunk: int,
    token_env: str | None,
    note: Callable[[str], None] = lambda _: None,
) -> Iterator[tuple[list[str], int, int]]:
    """POST the file's records in chunks; per chunk, one JSON line per prediction (in input
    order, with the request's id and the record's index: what `rayops feedback` takes
    labels by), the records answered so far and the records in all, so that the caller
    writes each chunk as it arrives: a chunk that fails ends the file after what was
    answered. ``note`` hears which columns are left out (not inputs of the served model)."""
    headers = {}
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ServeError(f"--token-env {token_env!r}: the variable is unset or empty")
        headers["Authorization"] = f"Bearer {token}"
    base = _checked_url(url)
    records = read_records(path)
    inputs = input_types(base, headers)
    if inputs is not None:
        left_out = sorted({key for record in records for key in record} - set(inputs))
        if left_out:
            note(f"not sent: {', '.join(left_out)} (not inputs of the served model)")
        records = typed_records(records, inputs)
    for start in range(0, len(records), chunk):
        body = {"records": records[start : start + chunk]}
        what = f"records {start}-{start + len(body['records']) - 1}"
        response = _send(f"{base}/predict", body, headers, what)
        if response.status_code != 200:
            raise ServeError(f"{what}: HTTP {response.status_code}: {refusal(response)}")
        answer = response.json()
        request_id = answer.get("request_id")
        lines = [
            json.dumps({"request_id": request_id, "record_index": i, **prediction})
            for i, prediction in enumerate(answer["predictions"])
        ]
        yield lines, start + len(lines), len(records)


def input_types(base: str, headers: dict[str, str]) -> dict[str, str] | None:
    """The served model's inputs and their JSON types (``integer``, ``number``,
    ``boolean``, ``string``) from ``GET /metadata``; None from a server that has no such
    page (a record is then sent as the file has it)."""
    response = _send(f"{base}/metadata", None, headers, "GET /metadata")
    if response.status_code == 401:
        raise ServeError(f"GET /metadata: HTTP 401: {refusal(response)} (see --token-env)")
    try:
        properties = response.json()["input_schema"]["properties"] if response.ok else None
    except (ValueError, KeyError, TypeError):
        properties = None
    if not isinstance(properties, dict):
        return None
    types = {}
    for name, spec in properties.items():
        kinds = [s.get("type") for s in spec.get("anyOf", [spec]) if s.get("type") != "null"]
        types[name] = kinds[0] if kinds and kinds[0] else "string"
    return types


def typed_records(records: list[dict[str, Any]], inputs: dict[str, str]) -> list[dict[str, Any]]:
    """Records with only the model's inputs, text typed as ingest types it: numbers,
    ``yes``/``no``-style booleans, null markers as nulls. A value that does not convert is
    sent as it is, so that the server's 422 names it."""
    return [{k: _typed(v, inputs[k]) for k, v in r.items() if k in inputs} for r in records]


def _typed(value: Any, kind: str) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in NULL_STRINGS:
        return None
    if kind == "boolean":
        return BOOLEAN_WORDS.get(text.lower(), value)
    if kind in ("integer", "number"):
        if not re.fullmatch(NUMBER_RE, text):  # ingest's numbers: no 'inf', no '1,234'
            return value
        number = float(text)
        return int(number) if kind == "integer" and number.is_integer() else number
    return value


def refusal(response: requests.Response) -> str:
    """A refused request in one line: for a 422, each field and value FastAPI named (the
    first three, then how many more), else the body's start."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if response.status_code != 422 or not isinstance(detail, list):
        return " ".join(response.text[:500].split())
    said = []
    for problem in detail[:3]:
        loc = [str(p) for p in problem.get("loc", []) if p not in ("body", "records")]
        where = f"record {loc[0]} {'.'.join(loc[1:])}" if len(loc) > 1 else ".".join(loc)
        said.append(f"{where}: {problem.get('msg')} (got {problem.get('input')!r})")
    more = f"; and {len(detail) - 3} more" if len(detail) > 3 else ""
    return "; ".join(said) + more
