"""A realistic raw customer-churn dataset: numeric and categorical columns, nulls, a few
malformed rows, and a label that depends on the features (so a model can learn it).

Deterministic by seed; written as CSV or JSON Lines files through a storage Location, so the
same generator fills a local folder or an S3 bucket.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from rayops.storage import Location

CONTRACTS = ["month-to-month", "one-year", "two-year"]
INTERNET = ["dsl", "fiber", "none"]
PAYMENTS = ["electronic_check", "mailed_check", "bank_transfer", "credit_card"]
REGIONS = ["north", "south", "east", "west"]


def _churn_probability(
    df: pd.DataFrame, rng: np.random.Generator, extra: np.ndarray | float = 0.0
) -> np.ndarray:
    logit = extra + (
        -1.2
        + 1.6 * (df["contract"] == "month-to-month")
        - 1.0 * (df["contract"] == "two-year")
        - 0.045 * df["tenure_months"]
        + 0.022 * (df["monthly_charges"] - 65)
        + 0.7 * (df["internet_service"] == "fiber")
        + 0.45 * df["support_calls"]
        + 0.6 * (df["payment_method"] == "electronic_check")
        - 0.015 * (df["age"] - 45)
        + 0.3 * (df["paperless_billing"] == "yes")
        + rng.normal(0, 0.3, len(df))
    )
    return 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))


def generate(rows: int, seed: int = 7) -> pd.DataFrame:
    """A clean-ish frame of ``rows`` customers, then corrupted like real exports are."""
    rng = np.random.default_rng(seed)
    df = _customers(rows, seed, rng)
    churn = rng.uniform(size=rows) < _churn_probability(df, rng)
    df["churned"] = np.where(churn, "yes", "no")
    return _corrupt(df.astype(object), rng)


NEW_PAYMENTS = ["wallet", "bnpl", "crypto"]  # one more each later month, then numbered


def new_payment(month: int) -> str:
    """The payment method that later month ``month`` (1, 2, ...) brings."""
    return NEW_PAYMENTS[month - 1] if month <= len(NEW_PAYMENTS) else f"wallet-{month}"


def later_month(rows: int, seed: int = 11, month: int = 1) -> pd.DataFrame:
    """A later month's exports with a documented shift: prices up by 40 a month (+40 in the
    first later month, +80 in the second...), four in five customers on month-to-month
    contracts, and a new payment method each month (:func:`new_payment`: ``wallet``, then
    ``bnpl``...; two in five customers) whose customers churn much more. A model trained
    before has never seen that method (nor this month's prices); one retrained on this
    month learns them."""
    rng = np.random.default_rng(seed)
    df = _customers(rows, seed, rng)
    df["monthly_charges"] = np.round(df["monthly_charges"] + 40 * month, 2)
    df["contract"] = rng.choice(CONTRACTS, rows, p=[0.80, 0.12, 0.08])
    wallet = rng.uniform(size=rows) < 0.4
    df.loc[wallet, "payment_method"] = new_payment(month)
    churn = rng.uniform(size=rows) < _churn_probability(df, rng, 2.5 * wallet - 1.5)
    df["churned"] = np.where(churn, "yes", "no")
    return _corrupt(df.astype(object), rng)


def _customers(rows: int, seed: int, rng: np.random.Generator) -> pd.DataFrame:
    tenure = rng.integers(0, 73, rows)
    monthly = np.round(rng.uniform(18, 120, rows), 2)
    df = pd.DataFrame(
        {
            "customer_id": [f"C{seed:02d}{i:07d}" for i in range(rows)],
            "age": rng.integers(18, 81, rows),
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": np.round(tenure * monthly * rng.uniform(0.9, 1.1, rows), 2),
            "contract": rng.choice(CONTRACTS, rows, p=[0.55, 0.25, 0.20]),
            "internet_service": rng.choice(INTERNET, rows, p=[0.35, 0.45, 0.20]),
            "payment_method": rng.choice(PAYMENTS, rows),
            "support_calls": rng.poisson(1.3, rows),
            "paperless_billing": rng.choice(["yes", "no"], rows, p=[0.6, 0.4]),
            "region": rng.choice(REGIONS, rows),
        }
    )
    return df


def _corrupt(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Nulls in nullable columns and ~1% malformed values, as exports really have."""
    n = len(df)
    for column, rate in (("total_charges", 0.03), ("region", 0.05), ("monthly_charges", 0.01)):
        df.loc[rng.uniform(size=n) < rate, column] = None
    bad = {
        "age": ["abc", 250, -4],
        "support_calls": [-3, "many"],
        "contract": ["weekly"],
        "total_charges": ["1,234.50"],
        "churned": [None],
    }
    for column, values in bad.items():
        rows = rng.choice(n, size=max(1, n // 500), replace=False)
        df.loc[rows, column] = rng.choice(np.array(values, dtype=object), size=len(rows))
    return df


def write(frame: pd.DataFrame, target: Location, fmt: str = "csv", files: int = 4) -> list[str]:
    """Split ``frame`` into ``files`` parts under ``target``; returns the URIs written."""
    written = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), max(1, files))):
        chunk = frame.iloc[part]
        buf = io.StringIO()
        if fmt == "csv":
            chunk.to_csv(buf, index=False)
        else:
            chunk.to_json(buf, orient="records", lines=True)
        name = f"part-{i:04d}.{'csv' if fmt == 'csv' else 'jsonl'}"
        target.join(name).write_bytes(buf.getvalue().encode())
        written.append(target.join(name).uri)
    return written
