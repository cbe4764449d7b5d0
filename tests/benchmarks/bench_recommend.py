"""Recommendation quality on real public ratings: rayops' recommenders against the
popularity baseline and a plain BPR matrix factorization, on the protocol of
``data.task: recommendation`` (each user's last positive held out by time, the whole
catalogue ranked, the user's seen items left out; recall@10 and NDCG@10).

The data ship inside a PyPI package (no network at run time; `make bench` installs it
without its dependencies, read here without importing it):

- ``ml100k``: MovieLens 100K (GroupLens; 943 users, 1,682 films, 100,000 ratings with
  their times), as RecBole's wheel carries it (``recbole/dataset_example/ml-100k``);
  every rating is a positive, as in the SASRec paper;
- ``generated``: the recommendation demo's interactions (``rayops demo --workload
  recommendation``), with its config.

Families, each on its defaults but for the objective: ``bpr`` (the plain baseline, at the
best of three learning rates), ``sasrec`` with ``objective: sampled`` (the original
SASRec: the next item against one random item), ``sasrec`` (rayops' default:
cross-entropy over the whole catalogue), ``sasrec_256_negatives`` (the same softmax over
the next item and 256 random items the batch shares, what a huge catalogue needs) and
``sasrec_attributes`` (the default, given the item table: MovieLens' first listed genre and
year of each film; the demo's genre and release week).

    .venv/bin/python tests/benchmarks/bench_recommend.py [--datasets ml100k] [--epochs 200]
        [--runs sasrec,sasrec_attributes]

Then the time an exact top 10 over 10K, 100K and 1M items takes (``--datasets ''`` for
that alone).

The last line printed is one JSON object with the per-dataset figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _setup import package_dir, start_bench

from rayops.config import PipelineConfig, validate_config
from rayops.data.ingest import ingest
from rayops.train import run_training

# name: (model section, learning rate). BPR gets three learning rates and is reported at
# its best: a baseline that is merely under-tuned would flatter the others.
RUNS = {
    "bpr_lr0.001": ({"family": "bpr"}, 0.001),
    "bpr_lr0.003": ({"family": "bpr"}, 0.003),
    "bpr_lr0.01": ({"family": "bpr"}, 0.01),
    "sasrec_sampled": ({"family": "sasrec", "recommender": {"objective": "sampled"}}, 0.001),
    "sasrec": ({"family": "sasrec"}, 0.001),
    "sasrec_256_negatives": ({"family": "sasrec", "recommender": {"negatives": 256}}, 0.001),
    "sasrec_attributes": ({"family": "sasrec"}, 0.001),
}  # with the item table, if any


def ml100k() -> tuple[pd.DataFrame, dict[str, Any]]:
    raw = pd.read_csv(
        package_dir("recbole") / "dataset_example" / "ml-100k" / "ml-100k.inter", sep="\t"
    )
    raw.columns = [c.split(":")[0] for c in raw.columns]
    frame = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "item_id": raw["item_id"].astype(str),
            "ts": pd.to_datetime(raw["timestamp"], unit="s", utc=True).dt.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "rating": raw["rating"].astype(int),
        }
    )
    columns = {
        "user_id": {"type": "categorical", "nullable": False},
        "item_id": {"type": "categorical", "nullable": False},
        "ts": {"type": "datetime", "nullable": False},
        "rating": {"type": "integer", "min": 1, "max": 5},
    }
    recommend = {
        "user": "user_id",
        "item": "item_id",
        "timestamp": "ts",
        "rating": "rating",
        "k": 10,
    }
    items = pd.read_csv(
        package_dir("recbole") / "dataset_example" / "ml-100k" / "ml-100k.item", sep="\t"
    )
    items.columns = [c.split(":")[0] for c in items.columns]
    titles = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "genre": items["class"].str.split(" ").str[0],  # the first listed
            "year": pd.to_numeric(items["release_year"], errors="coerce"),
        }
    )
    attributes = {
        "columns": {
            "item_id": {"type": "categorical", "nullable": False},
            "genre": {"type": "categorical"},
            "year": {"type": "integer"},
        }
    }
    return frame, {"columns": columns, "recommend": recommend, "_items": (titles, attributes)}


def generated() -> tuple[pd.DataFrame, dict[str, Any]]:
    import yaml

    from rayops.demo import config_path, watching

    data = yaml.safe_load(config_path("watching").read_text())["data"]
    recommend = dict(data["recommend"])
    attributes = recommend.pop("items")
    return watching.generate(), {
        "columns": data["columns"],
        "recommend": recommend,
        "_items": (watching.titles(), attributes),
    }


DATASETS = {"ml100k": ml100k, "generated": generated}


def _config(
    root: Path,
    name: str,
    data: dict[str, Any],
    model: dict[str, Any],
    learning_rate: float,
    epochs: int,
) -> PipelineConfig:
    return validate_config(
        {
            "name": name,
            "storage": {"root": str(root / "lake")},
            "data": {
                "task": "recommendation",
                "source": "raw",
                "max_quarantine_fraction": 0.5,
                **data,
            },
            "model": model,
            "train": {
                "num_workers": 1,
                "cpus_per_worker": 2,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "early_stopping_patience": 10,
            },
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
        }
    )


def run(name: str, work: Path, epochs: int, runs: list[str]) -> dict[str, Any]:
    frame, data = DATASETS[name]()
    titles, attributes = data.pop("_items")
    out: dict[str, Any] = {"rows": len(frame)}
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=work) as folder:
        root = Path(folder)
        (root / "lake" / "raw").mkdir(parents=True)
        frame.to_csv(root / "lake" / "raw" / f"{name}.csv", index=False)
        titles.to_csv(root / "lake" / "titles.csv", index=False)
        with_items = {
            **data,
            "dataset": f"{name}-items",
            "recommend": {**data["recommend"], "items": {**attributes, "source": "titles.csv"}},
        }
        versions: dict[bool, Any] = {}
        for run_name in runs:
            model, learning_rate = RUNS[run_name]
            has_items = run_name.endswith("_attributes")
            cfg = _config(
                root, name, with_items if has_items else data, model, learning_rate, epochs
            )
            version = versions.get(has_items) or versions.setdefault(has_items, ingest(cfg))
            started = time.perf_counter()
            m = run_training(cfg, version).metrics
            out[run_name] = {
                "recall_10": round(m["valid_recall_10"], 4),
                "ndcg_10": round(m["valid_ndcg_10"], 4),
                "epoch": int(m.get("epoch", 0)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            out["popularity"] = {
                "recall_10": round(m["valid_popularity_recall_10"], 4),
                "ndcg_10": round(m["valid_popularity_ndcg_10"], 4),
            }
            print(name, run_name, json.dumps(out[run_name]), flush=True)
    bprs = [out[k] for k in runs if k.startswith("bpr")]
    if bprs:
        out["bpr"] = max(bprs, key=lambda r: r["recall_10"])
        bpr = out["bpr"]["recall_10"]
        out["recall_over_bpr"] = {
            k: round(out[k]["recall_10"] / bpr, 2) if bpr else None
            for k in ("bpr", *runs, "popularity")
            if k in out
        }
    print(name, json.dumps(out))
    return out


def ranking_latency() -> dict[str, float]:
    """Milliseconds an exact top 10 over the whole catalogue takes a served SASRec (dim 64,
    history 50, 100 seen items), one user alone and a batch of 16, at 10K to 1M items."""
    import numpy as np
    import torch

    from rayops.models.recommend import RecommenderModel, SASRec

    out = {}
    for items in (10_000, 100_000, 1_000_000):
        model = RecommenderModel("sasrec", SASRec(items, 64, 50, 10, 2, 1, 0.2))
        for batch in (1, 16):
            x = np.zeros((batch, 151), dtype=np.float32)
            x[:, 1:] = np.random.default_rng(0).integers(1, items, (batch, 150))
            model.top(x, 10)  # warm up
            started = time.perf_counter()
            for _ in range(10):
                model.top(x, 10)
            out[f"{items}_items_batch_{batch}_ms"] = round((time.perf_counter() - started) * 100, 1)
    print("latency", json.dumps(out, sort_keys=True), f"({torch.get_num_threads()} threads)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--runs", default=",".join(RUNS), help="which of " + ", ".join(RUNS))
    args = parser.parse_args()
    work = start_bench("recommend")
    runs = [r for r in args.runs.split(",") if r]
    results: dict[str, Any] = {
        name: run(name, work, args.epochs, runs) for name in args.datasets.split(",") if name
    }
    results["exact_ranking"] = ranking_latency()
    print(json.dumps({"bench": "recommend", **results}))


if __name__ == "__main__":
    main()
