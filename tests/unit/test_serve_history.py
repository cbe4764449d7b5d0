"""A forecast's history read from the curated data when the request sends none."""

from pathlib import Path

import pytest

from rayops.config import StorageConfig
from rayops.data.versions import dataset_location
from rayops.errors import DataError, HistoryUnavailable
from rayops.serve.history import CuratedHistory


def test_no_dataset_is_the_callers_error_and_an_unreadable_store_a_retry(tmp_path):
    storage = StorageConfig(root=str(tmp_path / "lake"))
    history = CuratedHistory(storage, "demand", refresh_s=1.0)
    with pytest.raises(DataError, match="'demand' has no version to read it from: send"):
        history.rows(None, {"zone": "A"})  # type: ignore[arg-type]
    rows = Path(dataset_location(storage, "demand").uri) / "rows"
    rows.parent.mkdir(parents=True)
    rows.write_text("a file where the table's folder should be")  # a store gone wrong
    with pytest.raises(
        HistoryUnavailable,
        match=r"'demand' could not be read \(cannot "
        r"open Delta table .*rows.*\): send the series' history, or retry",
    ):
        history.rows(None, {"zone": "A"})  # type: ignore[arg-type]


def test_a_users_rows_without_a_dataset_are_none_and_an_unreadable_store_a_retry(tmp_path):
    storage = StorageConfig(root=str(tmp_path / "lake"))
    history = CuratedHistory(storage, "watching", refresh_s=1.0)
    assert history.rows_of("user_id", "u1").num_rows == 0  # a new deployment's first user
    history = CuratedHistory(storage, "watching", refresh_s=1.0)
    rows = Path(dataset_location(storage, "watching").uri) / "rows"
    rows.parent.mkdir(parents=True)
    rows.write_text("a file where the table's folder should be")
    with pytest.raises(HistoryUnavailable, match=r"'watching' could not be read .*: retry"):
        history.rows_of("user_id", "u1")
