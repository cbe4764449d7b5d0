"""The training loop's MLflow writer never blocks, even when the server does not answer."""

import time

from rayops.config import TrackingConfig
from rayops.models.metrics_writer import MetricsWriter
from tests.helpers import free_port


def test_metrics_for_a_server_that_is_down_are_handed_back_not_waited_on():
    down = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}")
    writer = MetricsWriter(down, "run-1", maxsize=2, attempts=2, backoff_s=0.05)
    started = time.perf_counter()
    for step in range(1, 6):
        writer.put(step, {"valid_f1": 0.5, "epoch": step})
    queued = time.perf_counter() - started
    unsent = writer.close(timeout_s=3.0)
    assert queued < 0.5  # put() returned at once although nothing could be sent
    assert unsent == [1, 2, 3, 4, 5]  # every epoch is reported back as not logged


def test_metrics_reach_a_local_store_once_even_when_an_answer_is_lost(tmp_path, monkeypatch):
    """Epoch 2's first send lands but its answer is lost (a server stopping mid-request):
    the retry carries the same timestamp, and MLflow stores the epoch once."""
    from mlflow import MlflowClient

    from rayops import tracking

    store = TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db")
    run_id = tracking.start_run(store, "exp", "run")
    sent, lost = tracking.log_metrics, []

    def answer_lost_once(*args, **kwargs):
        sent(*args, **kwargs)
        if args[3] == 2 and not lost:
            lost.append(2)
            raise ConnectionError("the answer was lost")

    monkeypatch.setattr(tracking, "log_metrics", answer_lost_once)
    writer = MetricsWriter(store, run_id, backoff_s=0.01)
    for step in (1, 2, 3):
        writer.put(step, {"valid_f1": 0.1 * step, "epoch": step, "note": "ignored"})
    assert writer.close(timeout_s=30) == [] and lost == [2]
    history = MlflowClient(store.uri).get_metric_history(run_id, "valid_f1")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
