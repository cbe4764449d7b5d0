import pandas as pd
import pytest

from rayops.config import validate_config
from rayops.errors import DataError
from rayops.monitor.feedback import append_feedback, live_metrics, prediction_table
from rayops.serve.prediction_log import PredictionLog


def _cfg(tmp_path, task="classification"):
    label = (
        {"type": "categorical", "values": ["no", "yes"]}
        if task == "classification"
        else {"type": "numeric"}
    )
    return validate_config(
        {
            "name": "t",
            "storage": {"root": str(tmp_path / "lake")},
            "data": {"label": "y", "task": task, "columns": {"x": {"type": "numeric"}, "y": label}},
        }
    )


def _served(cfg, version: str, answers: list, first: int = 0) -> None:
    log = PredictionLog(prediction_table(cfg), flush_interval_s=60)
    for i, answer in enumerate(answers, start=first):
        log.record(f"r{i}", "t", version, [{"x": i}], [{"prediction": answer}], 1.0)
    log.close()


def test_labels_join_the_prediction_log_per_model_version(tmp_path):
    cfg = _cfg(tmp_path)
    assert live_metrics(cfg) == {}  # nothing served, nothing labelled yet
    _served(cfg, "1", ["yes", "yes", "no", "no"])
    _served(cfg, "2", ["yes", "no"], first=4)
    labels = pd.DataFrame(
        {
            "request_id": ["r0", "r1", "r2", "r3", "r4", "r9"],
            "label": ["yes", "no", "no", "no", "yes", "yes"],
        }
    )
    assert append_feedback(cfg, labels) == 6
    # a corrected label for r1 arrives later: the newest one counts
    append_feedback(
        cfg, pd.DataFrame({"request_id": ["r1"], "label": ["yes"], "record_index": [0]})
    )
    live = live_metrics(cfg)
    assert set(live) == {"1", "2"}  # r9 was never served: no version to credit
    assert live["1"]["labelled"] == 4 and live["1"]["live_accuracy"] == 1.0
    assert live["2"]["labelled"] == 1 and live["2"]["live_recall"] == 1.0
    assert live_metrics(cfg, hours=1)["1"]["labelled"] == 4


def test_regression_feedback_and_a_bad_file_appends_nothing(tmp_path):
    cfg = _cfg(tmp_path, "regression")
    _served(cfg, "3", [10.0, 20.0])
    append_feedback(cfg, pd.DataFrame({"request_id": ["r0", "r1"], "label": [12.0, 18.0]}))
    live = live_metrics(cfg)["3"]
    assert live["live_rmse"] == pytest.approx(2.0) and live["live_mae"] == pytest.approx(2.0)
    with pytest.raises(DataError, match=r"feedback row 2 \(r1\): label is missing"):
        append_feedback(cfg, pd.DataFrame({"request_id": ["r0", "r1"], "label": [1.0, None]}))
    with pytest.raises(DataError, match="lacks the column"):
        append_feedback(cfg, pd.DataFrame({"id": ["r0"], "label": [1.0]}))
    assert live_metrics(cfg)["3"]["labelled"] == 2  # nothing of the bad files landed


def test_one_string_label_of_a_regression_model_does_not_stop_its_live_metrics(tmp_path):
    """A label stored before the API checked types (or by any writer of the table): left
    out of the metrics with a warning, never a numpy ValueError on every cycle."""
    from rayops.monitor.feedback import feedback_table
    from rayops.serve.prediction_log import FEEDBACK_SCHEMA, append_rows, feedback_row

    cfg = _cfg(tmp_path, "regression")
    _served(cfg, "3", [10.0, 20.0, 30.0])
    append_rows(
        feedback_table(cfg),
        [feedback_row("r0", 0, 12.0), feedback_row("r1", 0, "n/a"), feedback_row("r2", 0, True)],
        FEEDBACK_SCHEMA,
    )
    live = live_metrics(cfg)["3"]
    assert live["labelled"] == 1 and live["live_mae"] == pytest.approx(2.0)
    with pytest.raises(DataError, match=r"feedback row 1 \(r1\): label 'n/a' is not a number"):
        append_feedback(cfg, pd.DataFrame({"request_id": ["r1"], "label": ["n/a"]}))
