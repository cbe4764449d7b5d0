"""``rayops demo --operate``: after the demo's pipeline, a later month arrives with a
documented shift (:func:`rayops.demo.churn.later_month`): its customers are served with
their true labels sent back, and its export lands in the raw folder; one cycle of the
operate loop finds the drift, ingests, retrains, gates, shadows and promotes, while the
traffic goes on and every answer is counted."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pyarrow.compute as pc
import requests

from rayops.config import PipelineConfig
from rayops.data.ingest import file_source
from rayops.data.validate import ERROR, validate_frame
from rayops.demo import churn

# What the demo changes in the loop's defaults, so that one cycle shows every step in
# minutes: one drifted window is enough, a fifth of requests is mirrored, a short watch.
# Prices are the feature this business watches (a key feature: its drift alone is drift),
# so the verdict does not hang on how many other features moved since the champion trained.
# Each month's new payment method flips many answers of a model that learned it (two in
# five customers churn much more): the shadow's agreement bound, a sanity check, is 50%
# (a champion that never saw the month agreed 65-80% with its retrained challenger).
OPERATE_OVERRIDES = [
    "serve.mirror_fraction=0.2",
    "operate.drift_windows=1",
    "operate.min_new_labels=null",
    "operate.window_hours=1",
    "operate.window_min_labels=100",
    "operate.shadow.min_records=100",
    "operate.shadow.max_wait_s=300",
    "operate.shadow.min_agreement=0.5",
    "operate.rollback.watch_s=10",
    "tune.enabled=false",
    "monitor.key_features=[monthly_charges]",
]
MONTH_FOLDER = "month-{}"  # each later month's export, beside the first month's files


def next_month(cfg: PipelineConfig) -> int:
    """Which later month arrives now: one more than the raw folder holds, so every run of
    the demo brings a month the champion has not seen, whatever ran before."""
    names = file_source(cfg).location.list_dir()
    return 1 + sum(name.startswith(MONTH_FOLDER.format("")) for name in names)


def later_month_records(
    cfg: PipelineConfig, rows: int, seed: int, month: int = 1
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The later month's customers as an API client sends them (records the schema
    contract accepts, JSON types) and their true labels."""
    frame = churn.later_month(rows, seed, month)
    as_text = frame.map(lambda v: "" if v is None or v != v else str(v))
    typed = validate_frame(as_text, cfg.data.columns, cfg.data.label)
    good = frame[pc.is_null(typed.column(ERROR)).to_numpy(zero_copy_only=False)]
    records = good[cfg.data.feature_names].astype(object)
    if "paperless_billing" in records:
        records["paperless_billing"] = records["paperless_billing"] == "yes"
    records = records.where(records.notna(), None)
    return records.to_dict("records"), list(good[cfg.data.label])


def write_later_month(cfg: PipelineConfig, rows: int, seed: int, month: int = 1) -> list[str]:
    """The later month's export, beside the first month's raw files."""
    return churn.write(
        churn.later_month(rows, seed, month),
        file_source(cfg).location.join(MONTH_FOLDER.format(month)),
        files=1,
    )


class Traffic:
    """A client sending records one per request (each with an X-Request-ID) and each true
    label right after its answer; counts status codes and the versions that answered."""

    def __init__(
        self, url: str, records: list[dict[str, Any]], labels: list[Any], prefix: str = "demo"
    ) -> None:
        self.url, self.records, self.labels, self.prefix = url, records, labels, prefix
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayops-traffic", daemon=True)

    def _run(self) -> None:
        session, i = requests.Session(), 0
        while not self._stop.is_set():
            n = i % len(self.records)
            request_id = f"{self.prefix}-{i}"
            try:
                answer = session.post(
                    f"{self.url}/predict",
                    json={"records": [self.records[n]]},
                    headers={"X-Request-ID": request_id},
                    timeout=30,
                )
                self.statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    self.versions[answer.json()["model"]["version"]] += 1
                    told = session.post(
                        f"{self.url}/feedback",
                        timeout=30,
                        json={"labels": [{"request_id": request_id, "label": self.labels[n]}]},
                    )
                    self.statuses[told.status_code] += 1
            except requests.RequestException:
                self.statuses[-1] += 1  # no answer at all: counted as a failure
            i += 1

    @property
    def answered(self) -> int:
        return sum(self.versions.values())

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_logged(cfg: PipelineConfig, rows: int, timeout_s: float = 60.0) -> None:
    """Block until the prediction log holds ``rows`` rows (replicas append every
    ``serve.log_flush_interval_s``)."""
    import time

    from rayops.monitor.feedback import prediction_table
    from rayops.serve.prediction_log import read_log

    deadline = time.monotonic() + timeout_s
    while True:
        table = read_log(prediction_table(cfg), ["request_id"])
        if table is not None and table.num_rows >= rows:
            return
        if time.monotonic() > deadline:
            found = 0 if table is None else table.num_rows
            raise TimeoutError(
                f"the prediction log holds {found} rows after {timeout_s:.0f} s, not {rows}"
            )
        time.sleep(0.5)


def run_operate(cfg: PipelineConfig, url: str, rows: int) -> None:
    """The next later month served and ingested, one operate cycle, the outcome on screen."""
    import time

    from rayops.operate import Operator

    month = next_month(cfg)
    records, labels = later_month_records(cfg, rows, 10 + month, month)
    written = write_later_month(cfg, rows, 10 + month, month)
    print(f"\n=== operate: later month {month} arrives ({rows:,} customers, {written[0]}) ===")
    print(
        f"shift: prices up by {40 * month}, most customers on month-to-month contracts, a "
        f"new payment method {churn.new_payment(month)!r} whose customers churn more"
    )
    with Traffic(url, records, labels) as traffic:
        needed = max(cfg.monitor.min_rows, cfg.operate.window_min_labels) + 50
        while traffic.answered < needed:
            time.sleep(0.5)
        wait_logged(cfg, needed)
        print(
            f"traffic: {traffic.answered} requests of the new month answered, labels sent "
            "back; the loop runs one cycle:"
        )
        before = dict(traffic.versions)
        state = Operator(cfg, say=print).run(cycles=1)
        promoted = state.facts.get("challenger") if "promoted_at" in state.facts else None
        if promoted is not None and "rolled_back" not in state.facts:
            deadline = time.monotonic() + 60
            seen = traffic.versions[promoted]
            while traffic.versions[promoted] < seen + 20 and time.monotonic() < deadline:
                time.sleep(0.5)
    after = {v: n - before.get(v, 0) for v, n in traffic.versions.items()}
    print(
        f"served during the cycle: {', '.join(f'v{v}: {n}' for v, n in sorted(after.items()))}"
        f" requests; {traffic.failed} non-2xx of {sum(traffic.statuses.values())} "
        "responses (predictions and feedback)"
    )
    print(f"outcome:  {state.facts.get('outcome', 'no retrain')}")
