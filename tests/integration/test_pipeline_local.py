"""The whole path on the embedded defaults: local folder as the lake, sqlite MLflow,
a local Ray cluster: ingest -> train (2 workers) -> sweep (2 trials) -> register -> monitor.
Serving the champion over HTTP (and the config `deploy --emit` writes) is test_serve's."""

from __future__ import annotations

import json
import signal

import pytest
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.pipeline import train_and_register
from tests.helpers import demo_config, free_port, majority_accuracy, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, ray_start_4_cpus):
    tmp = tmp_path_factory.mktemp("local")
    config = demo_config(
        tmp, **{"serve.port": free_port(), "train.epochs": 4, "tune.num_samples": 2}
    )
    write_demo_data(file_source(config).location, rows=4000)
    return config


@pytest.fixture(scope="module")
def dataset(cfg):
    return ingest(cfg)


@pytest.fixture(scope="module")
def trained(cfg, dataset):
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = train_and_register(cfg, dataset, sweep=False)
    # Ray Train's fit() leaves its own Ctrl-C handler (abort the run) installed: with it,
    # Ctrl-C no longer stopped `rayops run` serving after its training run
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    return result


def test_ingest_accounts_for_every_row_and_keeps_rejects(cfg, dataset):
    rows = dataset.manifest.rows
    sources = file_source(cfg).location
    in_sources = sum(
        len(sources.join(name).read_bytes().splitlines()) - 1  # header
        for name in sources.list_dir()
    )
    on_disk = {split: dataset.table(split).num_rows for split in ("train", "valid", "quarantine")}
    assert in_sources == 4000 == rows.read
    assert in_sources == on_disk["train"] + on_disk["valid"] + on_disk["quarantine"]
    assert on_disk == {k: getattr(rows, k) for k in on_disk}
    assert 0.15 < rows.valid / rows.kept < 0.25
    reasons = dataset.manifest.quarantine_reasons
    assert reasons["age: not a finite number"] > 0
    assert reasons["churned: missing label (column is not nullable)"] > 0
    assert sum(reasons.values()) == rows.quarantine
    quarantine = dataset.quarantine().to_pandas()
    assert len(quarantine) == rows.quarantine
    assert quarantine["source_file"].str.endswith(".csv").all()
    assert (quarantine["line"] >= 2).all()
    assert quarantine["reason"].str.contains(": ").all() and quarantine["raw"].notna().all()
    assert (quarantine["dataset_version"] == 1).all()
    assert dataset.read("train").count() == rows.train
    assert dataset.uri.endswith("curated/churn/rows@v1")


def test_ingest_again_on_unchanged_input_reuses_the_version(cfg, dataset):
    assert ingest(cfg).id == dataset.id


def _always_positive_f1(dataset) -> float:
    counts = dataset.preprocessor.label_state["counts"]
    p = counts["yes"] / sum(counts.values())
    return 2 * p / (1 + p)


def test_training_beats_baselines_and_registers_champion(cfg, dataset, trained):
    assert trained.metrics["valid_f1"] > _always_positive_f1(dataset) + 0.05
    assert trained.metrics["valid_accuracy"] > majority_accuracy(dataset) + 0.03
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert trained.decision.promoted and trained.decision.previous is None
    assert champion.version == trained.decision.challenger.version
    assert champion.run_id == trained.run_id
    client = MlflowClient(cfg.tracking.uri)
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert artifacts == {"plots/loss_curves.png", "plots/confusion_matrix.png"}
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    # what the rows decided is logged, not null: 2 CPU workers with ~50 batches an epoch
    # keep one all-reduce per batch (accumulating 4 would leave them 12 steps)
    assert run.data.params["train.batch_size"] == str(
        cfg.train.batch_for(dataset.manifest.rows.train)
    )
    assert run.data.params["train.accumulate_grad_batches"] == "1"
    assert run.data.tags["rayops.dataset_version"] == dataset.id
    history = client.get_metric_history(trained.run_id, "valid_f1")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert run.data.metrics["samples_per_s"] > 0 and run.data.metrics["lr"] > 0


def test_optuna_sweep_on_an_earlier_version_logs_nested_trials_and_gates_the_best(
    cfg, dataset, trained
):
    """Optuna TPE, two trials at once (one worker each), each a nested MLflow run; after new rows
    arrive (version 2), --dataset-version 1 sweeps on version 1's rows and records it."""
    write_demo_data(file_source(cfg).location.join("later"), rows=600, seed=3)
    newer = ingest(cfg)
    assert newer.version == 2 and newer.manifest.rows.read == 4600
    swept_cfg = cfg.with_overrides(
        {
            "tune.enabled": True,
            "tune.search": "optuna",
            "tune.max_concurrent_trials": 2,
            "train.num_workers": 1,
        }
    )
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = train_and_register(swept_cfg, dataset_version=1)
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # Ray Tune's fit() leaves its own, too
    client = MlflowClient(cfg.tracking.uri)
    best = client.get_run(result.run_id)
    assert result.dataset == dataset.id == best.data.tags["rayops.dataset_version"]
    assert best.data.params["data.dataset_uri"].endswith("curated/churn/rows@v1")
    assert best.data.params["dataset_rows.read"] == "4000"
    parent_id = best.data.tags["mlflow.parentRunId"]
    children = client.search_runs(
        [best.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == 2
    assert all(tracking.TRIAL_TAG in r.data.tags for r in children)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    assert all(r.data.params["train.num_workers"] == "1" for r in children)
    assert len({r.data.params["train.learning_rate"] for r in children}) == 2
    sweep = client.get_run(parent_id).data.tags
    assert sweep["rayops.best_run_id"] == result.run_id
    # Optuna's TPE sampler chose the values and was told both trials' results
    assert sweep["rayops.search.sampler"] == "TPESampler"
    assert sweep["rayops.search.trials_told"] == "2"
    decision = result.decision
    assert decision.challenger.run_id == result.run_id
    assert int(decision.challenger.version) == int(trained.decision.challenger.version) + 1
    challenger = tracking.resolve_alias(cfg.tracking, cfg.model_name, "challenger")
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert decision.previous.version == trained.decision.challenger.version
    if decision.challenger_score > decision.champion_score:
        assert decision.promoted
        assert champion.version == challenger.version == decision.challenger.version
    else:  # refused: it never becomes @challenger
        assert not decision.promoted and champion.version == decision.previous.version
        assert challenger.version != decision.challenger.version


def test_monitor_flags_a_shifted_window_against_the_champions_training_data(cfg, trained, tmp_path):
    """A month of exports whose prices and contracts moved: `rayops monitor` names exactly
    those features, an unshifted month passes, and the report is in MLflow."""
    import yaml
    from typer.testing import CliRunner

    from rayops.cli import app
    from rayops.demo import churn
    from rayops.monitor.report import monitor_records

    def month(seed: int):
        frame = churn.generate(3000, seed).drop(columns=["customer_id", "churned"])
        return frame.astype(object).where(frame.notna(), None)

    same = monitor_records(cfg, month(11), log=False)
    assert same.report.verdict == "ok", [(f.name, f.psi) for f in same.report.features]
    assert same.rejected > 0  # the generator's malformed values: counted, not judged
    shifted = month(12)
    shifted["monthly_charges"] = [
        None if v is None or isinstance(v, str) else float(v) + 40
        for v in shifted["monthly_charges"]
    ]
    shifted["contract"] = "month-to-month"
    shifted.to_csv(tmp_path / "month.csv", index=False)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(
        app,
        [
            "monitor",
            str(tmp_path / "pipeline.yaml"),
            "--records",
            str(tmp_path / "month.csv"),
            "--output",
            str(tmp_path / "report"),
            "--fail-on-drift",
            "--set",
            "monitor.key_features=[contract]",
        ],
    )
    assert result.exit_code == 3, result.output  # 2 of 10 is below 30%, but a key feature
    verdicts = {
        line.split()[0]: line.split()[1]
        for line in result.output.splitlines()[2:]
        if line.split() and line.split()[0] in churn.generate(1, 0).columns
    }
    drifted = sorted(name for name, verdict in verdicts.items() if verdict == "drift")
    assert drifted == ["contract", "monthly_charges"], result.output
    report = json.loads((tmp_path / "report" / "drift_report.json").read_text())
    assert report["verdict"] == "drift" and sorted(report["drifted"]) == drifted
    assert report["reasons"] == ["key feature(s) drifted: contract"]
    assert "<svg" in (tmp_path / "report" / "drift_report.html").read_text()
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)],
        "tags.`rayops.kind` = 'monitor'",
    )
    assert run.data.tags["rayops.drift_verdict"] == "drift"
    assert run.data.metrics["psi.contract"] > 0.25 > run.data.metrics["psi.age"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {
        "drift/drift_report.json",
        "drift/drift_report.html",
    }
