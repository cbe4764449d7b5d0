"""The operate loop end to end on small data: a later month with a documented shift is
served (with feedback) and arrives as new files; the loop finds the drift, ingests,
is stopped as its retraining starts (while a person's training run is left unfinished
beside it), resumes its own run, gates (validation rows and the labelled window), is
stopped in the middle of the shadow, resumes there in a new operator, promotes, and the
served version changes, with not one non-2xx answer on the way."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rayops import tracking
from rayops.data.ingest import file_source
from rayops.demo.operate import (
    Traffic,
    later_month_records,
    wait_logged,
    write_later_month,
)
from rayops.operate import Operator
from rayops.pipeline import run_pipeline
from rayops.storage import Location
from tests.helpers import SHADOW_ON_FAILURES, demo_config, wait_for, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Stopped(BaseException):
    """The operator stopped from outside (what a killed driver leaves behind)."""


def test_the_loop_retrains_on_drift_resumes_a_stopped_cycle_and_promotes(tmp_path, serve_port):
    cfg = demo_config(
        tmp_path,
        **{
            # v1 barely learns (one epoch at a tiny rate): the retrained model beats it on any
            # draw of the data, so the gates' verdicts are not what this test leaves to chance
            "train.epochs": 1,
            "train.learning_rate": 1e-6,
            "train.num_workers": 1,
            "serve.port": serve_port,
            "serve.cpus_per_replica": 0.1,
            "serve.model_poll_interval_s": 0.5,
            "serve.mirror_fraction": 1.0,
            "serve.autoscaling.min_replicas": 1,
            "serve.autoscaling.max_replicas": 1,
            "monitor.min_rows": 40,
            "operate.drift_windows": 1,
            "operate.min_new_labels": "null",
            "operate.window_min_labels": 30,
            "operate.window_tolerance": 0.1,
            "operate.shadow.min_records": 20,
            "operate.shadow.max_wait_s": 120,
            **SHADOW_ON_FAILURES,
            "operate.rollback.watch_s": 3,
            "operate.rollback.min_records": 5,
            "operate.lease_s": 10,
        },
    )
    source = file_source(cfg).location
    write_demo_data(source, rows=2000, files=1)
    first = run_pipeline(cfg)  # v1: one epoch on the first month, served
    champion = first.model.decision.challenger.version
    assert first.url is not None

    write_later_month(cfg, 600, 11)  # the new month's export arrives
    records, labels = later_month_records(cfg, 600, 11)  # and its customers are served

    retrained = cfg.with_overrides({"train.epochs": 6, "train.learning_rate": 1e-3})
    lines: list[str] = []

    def stop_at(words: str) -> Callable[[str], None]:
        def say(line: str) -> None:
            lines.append(line)
            if words in line:
                raise Stopped(line)

        return say

    with Traffic(first.url, records, labels) as traffic:
        wait_logged(cfg, 60)  # the monitor's window holds the new month's records
        _stopped(Operator(retrained, say=stop_at("retrain: training on"), poll_s=0.5), lines)
        state = Operator(retrained).store.load()
        assert state.step == "retrain" and "retrain_record" in state.facts
        # Meanwhile a person's training run on the older dataset version stopped unfinished:
        # the newest unfinished record of the pipeline, which the resumed cycle must not take.
        manual = _unfinished_manual_run(cfg, first.dataset)
        _stopped(Operator(retrained, say=stop_at("beside the champion"), poll_s=0.5), lines)
        state = Operator(retrained).store.load()
        assert (state.cycle, state.step) == (1, "shadow")
        assert state.facts["drift"] == "drift" and state.facts["gate_passed"]
        challenger = state.facts["challenger"]
        assert state.facts["champion"] == champion and challenger != champion
        assert "window_gate" in state.facts and "shadow_started_at" in state.facts
        assert any("decide: retrain, because drift in 1 consecutive" in x for x in lines)
        gated = tracking.client(cfg.tracking).get_model_version(cfg.model_name, challenger)
        assert gated.tags["rayops.gate.dataset"] == state.facts["dataset"] != first.dataset.id
        assert manual.read_json()["status"] == "running"  # untouched

        resumed: list[str] = []
        final = Operator(retrained, say=resumed.append, poll_s=0.5).run(cycles=1)
        assert resumed[0] == "[cycle 1] resuming at step 'shadow'"
        assert not any("retrain:" in x for x in resumed)  # nothing trained twice
        assert final.facts["outcome"] == f"v{challenger} promoted to champion", resumed
        assert final.facts["shadow"]["shadow"]["errors"] == 0
        print("\n".join([*lines, *resumed]))  # the loop's story, under pytest -s
        before = traffic.versions[challenger]
        wait_for(
            lambda: traffic.versions[challenger] > before + 10,
            60,
            what="answers from the promoted version",
        )
    assert set(traffic.statuses) <= {200, 202}, traffic.statuses
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == challenger
    runs = tracking.client(cfg.tracking).search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)],
        "tags.`rayops.kind` = 'operate'",
    )
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["rayops.operate.outcome"] == f"v{challenger} promoted to champion"
    every = tracking.client(cfg.tracking).search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)]
    )
    # v1, v2 and the person's run, which no operator continued
    assert [r.info.run_name for r in every].count(f"{cfg.name}-train") == 3


def _stopped(operator: Operator, lines: list[str]) -> None:
    try:
        operator.run(cycles=1)
    except Stopped:
        return
    pytest.fail("the cycle ended before the step it was to stop in:\n" + "\n".join(lines))


def _unfinished_manual_run(cfg, version) -> Location:
    """A training run started by hand (`rayops train`) whose driver died before it trained:
    its MLflow run and its record, the newest of the pipeline's unfinished ones."""
    from rayops.train.records import new_record, runs_folder, write_record

    run_id = tracking.start_run(
        cfg.tracking,
        cfg.experiment_name,
        f"{cfg.name}-train",
        tags={tracking.DATASET_TAG: version.id},
    )
    folder = runs_folder(cfg, "train")
    write_record(folder, new_record(f"{cfg.name}-train-by-hand", run_id, version))
    return folder.join(f"{cfg.name}-train-by-hand.json")
