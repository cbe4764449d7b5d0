"""The operate loop end to end on small data: a later month with a documented shift is
served (with feedback) and arrives as new files; the loop finds the drift, ingests,
retrains, gates (validation rows and the labelled window), is stopped in the middle of the
shadow, resumes there in a new operator, promotes, and the served version changes, with
not one non-2xx answer on the way."""

from __future__ import annotations

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
from tests.helpers import demo_config, free_port, wait_for, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Stopped(BaseException):
    """The operator stopped from outside (what a killed driver leaves behind)."""


def test_the_loop_retrains_on_drift_resumes_a_stopped_cycle_and_promotes(
        tmp_path, request, ray_start_4_cpus):
    from ray import serve

    cfg = demo_config(tmp_path, **{
        # v1 barely learns (one epoch at a tiny rate): the retrained model beats it on any
        # draw of the data, so the gates' verdicts are not what this test leaves to chance
        "train.epochs": 1, "train.learning_rate": 1e-6, "train.num_workers": 1,
        "serve.port": free_port(),
        "serve.cpus_per_replica": 0.1, "serve.model_poll_interval_s": 0.5,
        "serve.mirror_fraction": 1.0, "serve.autoscaling.min_replicas": 1,
        "serve.autoscaling.max_replicas": 1, "monitor.min_rows": 40,
        "operate.drift_windows": 1, "operate.min_new_labels": "null",
        "operate.window_min_labels": 30, "operate.window_tolerance": 0.1,
        "operate.shadow.min_records": 20, "operate.shadow.max_wait_s": 120,
        "operate.shadow.min_agreement": 0.0, "operate.shadow.max_p95_latency_ratio": 10,
        "operate.rollback.watch_s": 3, "operate.rollback.min_records": 5,
        "operate.lease_s": 10})
    source = file_source(cfg).location
    write_demo_data(source, rows=2000, files=1)
    first = run_pipeline(cfg)  # v1: one epoch on the first month, served
    request.addfinalizer(serve.shutdown)
    champion = first.model.decision.challenger.version
    assert first.url is not None

    write_later_month(cfg, 600, 11)  # the new month's export arrives
    records, labels = later_month_records(cfg, 600, 11)  # and its customers are served

    retrained = cfg.with_overrides({"train.epochs": 6, "train.learning_rate": 1e-3})
    lines: list[str] = []

    def stop_in_shadow(line: str) -> None:
        lines.append(line)
        if "shadow: v" in line and "beside the champion" in line:
            raise Stopped(line)

    with Traffic(first.url, records, labels) as traffic:
        wait_logged(cfg, 60)  # the monitor's window holds the new month's records
        try:
            Operator(retrained, say=stop_in_shadow, poll_s=0.5).run(cycles=1)
        except Stopped:
            pass
        else:
            pytest.fail("the cycle ended before the shadow step:\n" + "\n".join(lines))
        state = Operator(retrained).store.load()
        assert (state.cycle, state.step) == (1, "shadow")
        assert state.facts["drift"] == "drift" and state.facts["gate_passed"]
        challenger = state.facts["challenger"]
        assert state.facts["champion"] == champion and challenger != champion
        assert "window_gate" in state.facts and "shadow_started_at" in state.facts
        assert any("decide: retrain, because drift in 1 consecutive" in x for x in lines)

        resumed: list[str] = []
        final = Operator(retrained, say=resumed.append, poll_s=0.5).run(cycles=1)
        assert resumed[0] == "[cycle 1] resuming at step 'shadow'"
        assert not any("retrain:" in x for x in resumed)  # nothing trained twice
        assert final.facts["outcome"] == f"v{challenger} promoted to champion", resumed
        assert final.facts["shadow"]["shadow"]["errors"] == 0
        print("\n".join([*lines, *resumed]))  # the loop's story, under pytest -s
        before = traffic.versions[challenger]
        wait_for(lambda: traffic.versions[challenger] > before + 10, 60,
                 what="answers from the promoted version")
    assert set(traffic.statuses) <= {200, 202}, traffic.statuses
    assert tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion").version == \
        challenger
    runs = tracking.client(cfg.tracking).search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)],
        "tags.`rayops.kind` = 'operate'")
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["rayops.operate.outcome"] == f"v{challenger} promoted to champion"
    every = tracking.client(cfg.tracking).search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)])
    assert [r.info.run_name for r in every].count(f"{cfg.name}-train") == 2  # v1, v2 only
