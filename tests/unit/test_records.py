"""Run records: a record that cannot be read is named with what is wrong, never guessed at."""

import json

import pytest

from rayops.storage import resolve
from rayops.train.records import BadRecord, RunRecord, read_record, write_record


def test_a_written_record_reads_back(tmp_path):
    folder = resolve(str(tmp_path))
    record = RunRecord("train-1", "abc", "churn@v3")
    write_record(folder, record, status="failed")
    read = read_record(folder.join("train-1.json"))
    assert (read.name, read.run_id, read.dataset_version, read.status) == (
        "train-1",
        "abc",
        "churn@v3",
        "failed",
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object (got list)"),
        (
            json.dumps({"name": "train-1", "dataset_version": "churn@v3"}),
            "lacks run_id (has: dataset_version, name)",
        ),
        (
            json.dumps(
                {
                    "name": "train-1",
                    "run_id": "abc",
                    "dataset_version": "churn@v3",
                    "status": "done",
                }
            ),
            "status 'done' is not one of running, failed, finished",
        ),
    ],
)
def test_a_record_that_cannot_be_read_names_the_file_and_the_fault(tmp_path, text, says):
    (tmp_path / "train-1.json").write_text(text)
    with pytest.raises(BadRecord) as caught:
        read_record(resolve(str(tmp_path)).join("train-1.json"))
    assert str(tmp_path / "train-1.json") in str(caught.value)
    assert says in str(caught.value)
