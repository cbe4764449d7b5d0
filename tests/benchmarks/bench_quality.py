"""Model quality on defaults: rayops' two families against scikit-learn's
HistGradientBoosting on the same curated split of real public tables.

Each dataset ships inside a PyPI package (no network at run time; `make bench` installs
them with the ``bench`` extra): penguins (palmerpenguins; classification, string
categoricals and nulls), diamonds and txhousing (plotnine's data; regression, string
categoricals, txhousing with nulls), and the demo's churn exports. For each one the config
is what ``rayops schema infer`` proposes (the label named, nothing else touched), the data
goes through ``ingest``, and rayops trains each family with its defaults: no tuning.
``HistGradientBoosting{Classifier,Regressor}()`` with its defaults is fitted on the same
curated training rows (categoricals as pandas categories) and scored on the same
validation rows with the same metric functions.

The compared metric is the run's target metric (F1 for classification, RMSE for
regression); the ratio is rayops over baseline for F1 and baseline over rayops for RMSE,
so above 1 means rayops is better. rayops picks its best epoch/round on that validation
split (the baseline stops early on a 10% split of the training rows), which flatters rayops
slightly on small tables.

    .venv/bin/python tests/benchmarks/bench_quality.py [--datasets penguins,diamonds]

The last line printed is one JSON object with the per-dataset figures,
``worst_ratio_best_family`` and ``worst_ratio_mlp``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from _setup import start_bench

from rayops.config import PipelineConfig, validate_config
from rayops.data.infer import propose_config
from rayops.data.ingest import ingest
from rayops.data.sources import FileSource
from rayops.data.versions import DatasetVersion
from rayops.demo import churn
from rayops.storage import resolve
from rayops.train import run_training


def _plotnine(name: str) -> pd.DataFrame:
    spec = importlib.util.find_spec("plotnine")  # its data files, without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("plotnine is not installed: make bench (or pip install -e .[bench])")
    return pd.read_csv(Path(spec.submodule_search_locations[0]) / "data" / f"{name}.csv")


def _penguins() -> pd.DataFrame:
    import palmerpenguins

    return palmerpenguins.load_penguins()


def _churn() -> pd.DataFrame:
    return churn.generate(10_000, seed=7)


# name -> (loader, label)
DATASETS: dict[str, tuple[Callable[[], pd.DataFrame], str]] = {
    "penguins": (_penguins, "species"),
    "churn": (_churn, "churned"),
    "txhousing": (lambda: _plotnine("txhousing"), "median"),
    "diamonds": (lambda: _plotnine("diamonds"), "price"),
}


def inferred_config(work: Path, name: str, frame: pd.DataFrame, label: str) -> PipelineConfig:
    """Write the table as CSV and take the config `rayops schema infer` proposes."""
    raw = work / name / "raw"
    raw.mkdir(parents=True)
    frame.to_csv(raw / f"{name}.csv", index=False)
    proposal = propose_config(
        FileSource(resolve(str(raw)), "csv"), name, label, str(work / name / "lake")
    )
    proposal["tracking"] = {"uri": f"sqlite:///{work}/mlflow.db", "experiment": name}
    # Resources, not tuning: half a CPU per worker leaves room for Ray Data on 2 cores.
    proposal["train"] = {"cpus_per_worker": 0.5}
    return validate_config(proposal)


def _frame(
    table: pa.Table, version: DatasetVersion, cfg: PipelineConfig, categories: dict[str, list[str]]
) -> pd.DataFrame:
    columns = {}
    for name in cfg.data.feature_names:
        kind = cfg.data.columns[name].type
        values = table.column(name)
        if kind in ("categorical", "text"):
            columns[name] = pd.Categorical(values.to_pylist(), categories=categories[name])
        elif kind == "datetime":
            columns[name] = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
        else:
            columns[name] = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return pd.DataFrame(columns)


def baseline(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, float]:
    """HistGradientBoosting's validation metrics on the curated split."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    pre = version.preprocessor
    train, valid = version.table("train"), version.table("valid")
    categories = {
        n: sorted({v for v in train.column(n).to_pylist() if v is not None})
        for n in cfg.data.feature_names
        if cfg.data.columns[n].type in ("categorical", "text")
    }
    y_train = pre.encode_label(train.column(pre.label))
    y_valid = pre.encode_label(valid.column(pre.label))
    task = pre.rules
    keep = task.known(y_valid)
    x_train = _frame(train, version, cfg, categories)
    x_valid = _frame(valid, version, cfg, categories)[keep]
    # The task's own scoring, on what gradient boosting outputs: class probabilities, or
    # the standardized value as one column.
    learner = (
        HistGradientBoostingClassifier if task.probabilities else HistGradientBoostingRegressor
    )
    fitted = learner(categorical_features="from_dtype", random_state=0).fit(x_train, y_train)
    outputs = (
        fitted.predict_proba(x_valid) if task.probabilities else fitted.predict(x_valid)[:, None]
    )
    return task.score(outputs, y_valid[keep], pre.label_state).metrics


def ratio(cfg: PipelineConfig, mine: float, theirs: float) -> float:
    """Above 1: rayops is better."""
    _, mode = cfg.target_metric
    return mine / theirs if mode == "max" else theirs / mine


def run_dataset(work: Path, name: str) -> dict[str, Any]:
    loader, label = DATASETS[name]
    frame = loader()
    cfg = inferred_config(work, name, frame, label)
    version = ingest(cfg)
    metric, _ = cfg.target_metric
    second = "valid_accuracy" if cfg.data.task == "classification" else "valid_r2"
    figures: dict[str, Any] = {
        "rows": version.manifest.rows.train + version.manifest.rows.valid,
        "task": cfg.data.task,
        "metric": metric,
    }
    started = time.perf_counter()
    theirs = baseline(cfg, version)
    figures["baseline"] = {
        "metric": theirs[metric],
        second: theirs[second],
        "seconds": round(time.perf_counter() - started, 1),
    }
    for family in ("mlp", "xgboost"):
        started = time.perf_counter()
        outcome = run_training(cfg.with_overrides({"model.family": family}), version)
        mine = outcome.metrics
        figures[family] = {
            "metric": mine[metric],
            second: mine[second],
            "steps": int(mine["epoch"]),
            "seconds": round(time.perf_counter() - started, 1),
            "ratio": ratio(cfg, mine[metric], theirs[metric]),
        }
    figures["ratio_best_family"] = max(figures["mlp"]["ratio"], figures["xgboost"]["ratio"])
    return figures


def show(name: str, f: dict[str, Any]) -> None:
    second = "valid_accuracy" if f["task"] == "classification" else "valid_r2"
    print(
        f"{name:10s} {f['task']:14s} {f['rows']:6d} rows  {f['metric']}: "
        f"baseline {f['baseline']['metric']:.4f}  mlp {f['mlp']['metric']:.4f} "
        f"(x{f['mlp']['ratio']:.3f}, {f['mlp']['steps']} epochs)  xgboost "
        f"{f['xgboost']['metric']:.4f} (x{f['xgboost']['ratio']:.3f}, "
        f"{f['xgboost']['steps']} rounds)  |  {second}: {f['baseline'][second]:.4f} / "
        f"{f['mlp'][second]:.4f} / {f['xgboost'][second]:.4f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated, from {', '.join(DATASETS)}",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    work = start_bench("quality")
    results = {}
    for name in names:
        results[name] = run_dataset(work, name)
        show(name, results[name])
    print(
        json.dumps(
            {
                "datasets": results,
                "worst_ratio_best_family": min(r["ratio_best_family"] for r in results.values()),
                "worst_ratio_mlp": min(r["mlp"]["ratio"] for r in results.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
