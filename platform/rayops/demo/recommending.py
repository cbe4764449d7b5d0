"""``rayops demo --workload recommendation``: generated viewing -> ingest -> sweep -> gate
-> Ray Serve, then a served top 10 for one viewer beside the most popular titles."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rayops import tracking
from rayops.demo import watching

if TYPE_CHECKING:
    from rayops.config import PipelineConfig
    from rayops.pipeline import PipelineResult

USERS, ITEMS = 600, 400


def write_data(cfg: PipelineConfig, seed: int) -> None:
    """The raw weekly files of who watched what, and the catalogue's table."""
    from rayops.data.ingest import file_source
    from rayops.storage import resolve_under, root_of

    watching.write(
        watching.generate(users=USERS, items=ITEMS, seed=seed), file_source(cfg).location
    )
    items = cfg.data.recommend.items if cfg.data.recommend else None
    if items is not None:
        watching.write_titles(
            watching.titles(items=ITEMS, seed=seed),
            resolve_under(root_of(cfg.storage), items.source, cfg.storage),
        )


def _viewer(result: PipelineResult) -> str:
    """The viewer with the most titles watched (the story is clearest there)."""
    users = result.dataset.table("train").column("user_id").to_pandas()
    return str(users.value_counts().index[0])


def request(result: PipelineResult, seed: int) -> dict[str, Any]:
    return {"user": _viewer(result), "k": 10}


def show(
    cfg: PipelineConfig, result: PipelineResult, body: dict[str, Any], answer: dict[str, Any]
) -> None:
    """The story: data, model against popularity, gate, the served top 10."""
    rows, metrics = result.dataset.manifest.rows, result.model.metrics
    champion = result.model.decision.champion
    layout = result.dataset.preprocessor.layout
    k = layout.k
    seen = result.dataset.rows_where({"user_id": body["user"]}).to_pandas()
    print("\n=== rayops demo: recommendation ===")
    print(
        f"data:     {result.dataset.id}: {rows.train:,} interactions of "
        f"{len(layout.users):,} viewers with {len(layout.items):,} titles, "
        f"{rows.quarantine:,} quarantined (see `rayops quarantine`)"
    )
    print(
        f"model:    valid_recall_{k}={metrics[f'valid_recall_{k}']:.3f}, "
        f"valid_ndcg_{k}={metrics[f'valid_ndcg_{k}']:.3f} vs popularity "
        f"{metrics[f'valid_popularity_recall_{k}']:.3f}, "
        f"{metrics[f'valid_popularity_ndcg_{k}']:.3f}"
    )
    print(f"gate:     {result.model.decision.summary()}")
    print(f"serving:  {champion.name} v{champion.version} @champion at {result.url}/recommend")
    watched = seen.sort_values("ts")["item_id"].tail(5).tolist()
    print(
        f"request:  POST /recommend, viewer {body['user']} ({len(seen)} titles watched, "
        f"lately {', '.join(watched)})"
    )
    print(
        f"          -> HTTP 200, answered by v{answer['model']['version']}"
        f"{' (fallback: the popular titles)' if answer['fallback'] else ''}"
    )
    popular = [item for item, _ in layout.popular if item not in set(seen["item_id"])][:k]
    print("  #   recommended (score)        most popular not yet watched")
    for n, (item, other) in enumerate(zip(answer["items"], popular, strict=False), 1):
        shown = f"{item['item']} ({item['score']:.2f})"
        print(f"  {n:<3} {shown:<26} {other}")
    print(tracking.where_to_look(cfg.tracking))


def curl(url: str, body: dict[str, Any]) -> str:
    return (
        f"curl -s -X POST {url}/recommend -H 'content-type: application/json' "
        f"-d '{json.dumps(body)}'"
    )
