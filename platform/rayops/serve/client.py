"""A small client for ``rayops predict``: records from a file, predictions as JSON lines."""

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from rayops.errors import ServeError


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records from CSV (empty cells are nulls), JSON Lines or a JSON array."""
    if path.suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=True)
        return [{k: (None if pd.isna(v) else v) for k, v in row.items()}
                for row in frame.astype(object).to_dict(orient="records")]
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def predict_file(path: Path, url: str, chunk: int, token_env: str | None) -> list[str]:
    """POST the file's records in chunks; one JSON line per prediction, in input order."""
    headers = {}
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ServeError(f"--token-env {token_env!r}: the variable is unset or empty")
        headers["Authorization"] = f"Bearer {token}"
    records = read_records(path)
    lines: list[str] = []
    for start in range(0, len(records), chunk):
        body = {"records": records[start:start + chunk]}
        response = requests.post(f"{url.rstrip('/')}/predict", json=body, headers=headers,
                                 timeout=60)
        if response.status_code != 200:
            raise ServeError(f"records {start}-{start + len(body['records']) - 1}: HTTP "
                             f"{response.status_code}: {response.text[:500]}")
        lines += [json.dumps(p) for p in response.json()["predictions"]]
    return lines
