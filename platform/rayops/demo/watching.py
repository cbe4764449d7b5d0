"""Who watched what: the recommendation demo's raw data.

A catalogue of titles in a few genres, each with a latent taste vector and a release
week (new titles keep arriving), and users whose own tastes drive what they watch: each
next title is drawn among those released by then, by the user's taste, the previous
title's likeness (people binge alike) and the title's popularity (a skewed, Zipf-like
pull). Ratings follow the match. A few malformed rows (no user, a rating off the scale, a
date that is not one), as real exports have. Deterministic by seed; one CSV file per week,
so later weeks arrive as new files; the catalogue's attributes (genre, release week) are
a table of their own (:func:`titles`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayops.demo.files import write_weekly
from rayops.storage import Location

START = pd.Timestamp("2024-01-01T00:00:00Z")
GENRES = ("drama", "comedy", "thriller", "documentary", "animation", "scifi")
DIM = 8


def catalogue(items: int, weeks: int, rng: np.random.Generator) -> pd.DataFrame:
    """Titles ``drama-000``... (the genre in the id, for reading answers) with a taste
    vector near the genre's, a release week
    (a third out from the start, the rest spread over the weeks) and a popularity."""
    centres = rng.normal(0, 1, (len(GENRES), DIM))
    genre = rng.integers(0, len(GENRES), items)
    vectors = centres[genre] + rng.normal(0, 0.6, (items, DIM))
    release = np.where(rng.random(items) < 0.35, 0, rng.integers(0, weeks, items))
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    return pd.DataFrame(
        {
            "item": [f"{GENRES[g]}-{i:03d}" for i, g in enumerate(genre)],
            "genre": [GENRES[g] for g in genre],
            "release_week": release,
            "popularity": rng.permutation(popularity),
            "vector": list(vectors),
        }
    )


def _sessions(
    user: np.ndarray, titles: pd.DataFrame, count: int, weeks: int, rng: np.random.Generator
) -> list[tuple[int, float, int]]:
    """``count`` (title, when in weeks from the start, rating) of one user, in order."""
    vectors = np.stack(titles["vector"].to_numpy())
    log_pop = np.log(titles["popularity"].to_numpy())
    release = titles["release_week"].to_numpy()
    start = int(rng.integers(0, max(weeks // 2, 1)))
    watched: list[tuple[int, float, int]] = []
    seen = np.zeros(len(titles), dtype=bool)
    previous = None
    pace = (weeks - start) / max(count, 1)
    for step in range(count):
        when = start + (step + rng.random() * 0.9) * pace
        week = min(weeks - 1, int(when))
        taste = vectors @ user + (
            0.8 * vectors @ vectors[previous] if previous is not None else 0.0
        )
        logits = 1.2 * taste / np.sqrt(DIM) + log_pop
        logits[seen | (release > week)] = -np.inf
        if not np.isfinite(logits).any():
            break
        p = np.exp(logits - logits[np.isfinite(logits)].max())
        pick = int(rng.choice(len(titles), p=p / p.sum()))
        match = float(vectors[pick] @ user) / np.sqrt(DIM)
        rating = int(np.clip(np.round(3.2 + 1.2 * match + rng.normal(0, 0.7)), 1, 5))
        watched.append((pick, when, rating))
        seen[pick] = True
        previous = pick
    return watched


def generate(
    users: int = 600, items: int = 400, weeks: int = 12, per_user: int = 30, seed: int = 11
) -> pd.DataFrame:
    """Interactions ``user_id, item_id, ts, rating`` over ``weeks``, corrupted like exports."""
    rng = np.random.default_rng(seed)
    titles = catalogue(items, weeks, rng)
    rows = []
    for u in range(users):
        taste = rng.normal(0, 1, DIM)
        count = max(3, int(rng.poisson(per_user)))
        for pick, when, rating in _sessions(taste, titles, count, weeks, rng):
            at = START + pd.Timedelta(seconds=int(when * 7 * 86400))
            rows.append((f"u{u:05d}", titles["item"][pick], at, rating))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "rating"])
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return _corrupt(frame, rng)


def _corrupt(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    df = df.astype({"rating": object})
    bad = rng.choice(len(df), size=max(3, len(df) // 1500), replace=False)
    third = len(bad) // 3
    df.loc[bad[:third], "user_id"] = None
    df.loc[bad[third : 2 * third], "rating"] = 9
    df.loc[bad[2 * third :], "ts"] = "last tuesday"
    return df


def titles(items: int = 400, weeks: int = 12, seed: int = 11) -> pd.DataFrame:
    """The catalogue as a team keeps it (``item_id, genre, release_week``): the titles of
    :func:`generate` with the same arguments."""
    shown = catalogue(items, weeks, np.random.default_rng(seed))
    return pd.DataFrame(
        {"item_id": shown["item"], "genre": shown["genre"], "release_week": shown["release_week"]}
    )


def write_titles(frame: pd.DataFrame, target: Location) -> str:
    """The catalogue as one CSV file at ``target``; returns its URI."""
    target.write_bytes(frame.to_csv(index=False).encode())
    return target.uri


def write(
    frame: pd.DataFrame, target: Location, first_week: int = 0, weeks: int | None = None
) -> list[str]:
    """One CSV file per week (``week-0000.csv``...) from ``first_week``; returns the URIs."""
    return write_weekly(frame, target, START, first_week, weeks)
