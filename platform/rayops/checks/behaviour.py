"""Behavioural checks of a tabular model on raw records: minimum functionality (records
and the answer they must get), invariance (a perturbation that must not move predictions)
and directional expectations (a change that must move them one way).

Predictions are read as numbers: the probability of each class (classification) or the
value (regression). A record the perturbation makes invalid for the model's schema fails
the check with the model's own error: a check that cannot run never passes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rayops.checks.results import CheckResult
from rayops.config.checks import DirectionalCheck, InvarianceCheck, MinimumCheck
from rayops.errors import DataError, PredictionError
from rayops.predict import Predictor


def _classes(predictor: Predictor) -> list[str] | None:
    return (
        list(predictor.preprocessor.classes) if predictor.preprocessor.rules.probabilities else None
    )


def outputs(predictor: Predictor, frame: pd.DataFrame) -> np.ndarray:
    """One row per record: its class probabilities (in the model's class order), or its
    value as one column."""
    answers = predictor.predict(frame)
    classes = _classes(predictor)
    if classes is None:
        return np.array([[float(a["prediction"])] for a in answers])
    return np.array([[a["probabilities"][c] for c in classes] for a in answers])


def _of(predictor: Predictor, values: np.ndarray, of_class: str | None) -> np.ndarray:
    classes = _classes(predictor)
    if classes is None:
        return values[:, 0]
    return values[:, classes.index(str(of_class))]


def broken(kind: str, name: str, exc: Exception) -> CheckResult:
    """A check that could not be run: failed, with the model's (or the data's) error."""
    return CheckResult(kind, name, False, f"could not be run: {exc}")


def minimum(predictor: Predictor, check: MinimumCheck, examples: int) -> CheckResult:
    """Each record must get the expected class, or a prediction within the range."""
    frame = pd.DataFrame(check.records)
    try:
        answers = predictor.predict(frame)
    except (DataError, PredictionError) as exc:
        return broken("minimum", check.name, exc)
    wrong = []
    for i, (record, answer) in enumerate(zip(check.records, answers, strict=True)):
        got = (
            answer["prediction"]
            if check.of_class is None
            else answer["probabilities"].get(check.of_class)
        )
        bad = check.expect_class is not None and str(answer["prediction"]) != check.expect_class
        if check.expect_min is not None or check.expect_max is not None:
            value = float(got)
            bad = (
                bad
                or (check.expect_min is not None and value < check.expect_min)
                or (check.expect_max is not None and value > check.expect_max)
            )
        if bad:
            wrong.append({"record": i, **record, "got": got})
    expected = (
        f"class {check.expect_class!r}"
        if check.expect_class is not None
        else f"{check.of_class or 'a prediction'} in [{check.expect_min}, {check.expect_max}]"
    )
    detail = f"{len(check.records) - len(wrong)} of {len(check.records)} record(s) got {expected}"
    return CheckResult("minimum", check.name, not wrong, detail, wrong[:examples])


def perturbed(
    frame: pd.DataFrame, check: InvarianceCheck, rng: np.random.Generator
) -> pd.DataFrame:
    """``frame`` with the check's columns perturbed."""
    out = frame.copy()
    for column in check.columns:
        values = out[column]
        if check.perturb == "shuffle":
            out[column] = values.to_numpy()[rng.permutation(len(values))]
        elif check.perturb == "set":
            out[column] = [check.value] * len(values)
        elif check.perturb == "replace":
            out[column] = [check.mapping.get(str(v), v) for v in values]
        else:
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            spread = float(np.nanstd(numbers.to_numpy())) or 1.0
            out[column] = numbers + rng.normal(0, check.scale * spread, len(values))
    return out


def invariance(
    predictor: Predictor,
    check: InvarianceCheck,
    frame: pd.DataFrame,
    rng: np.random.Generator,
    examples: int,
) -> CheckResult:
    """No prediction may move by more than the tolerance (beyond ``max_share`` of them)."""
    try:
        changed = perturbed(frame, check, rng)
        moved = np.abs(outputs(predictor, changed) - outputs(predictor, frame)).max(axis=1)
    except (DataError, PredictionError, ValueError) as exc:
        return broken("invariance", check.name, exc)
    return invariance_result(check, moved, changed, examples)


def invariance_result(
    check: InvarianceCheck,
    moved: np.ndarray,
    changed: pd.DataFrame,
    examples: int,
    unit: str = "record",
) -> CheckResult:
    """The verdict on how far each answer moved (``changed``: the perturbed records, one
    per answer)."""
    beyond = moved > check.tolerance
    share = float(beyond.mean()) if len(moved) else 0.0
    worst: Any = np.argsort(-moved)[:examples] if beyond.any() else []
    shown = [
        {**_record(changed, int(i), check.columns), "moved": round(float(moved[i]), 4)}
        for i in worst
        if beyond[i]
    ]
    detail = (
        f"{int(beyond.sum())} of {len(moved)} {unit}(s) moved more than "
        f"{check.tolerance:g} when {check.perturb} {', '.join(check.columns)} "
        f"(largest {float(moved.max()) if len(moved) else 0.0:.4f}; at most "
        f"{check.max_share:.0%} may)"
    )
    return CheckResult("invariance", check.name, share <= check.max_share, detail, shown)


def changed(frame: pd.DataFrame, check: DirectionalCheck) -> pd.DataFrame:
    """The records whose value the change moves, changed (a ``set`` to the value a record
    has already moves nothing, a missing number cannot be added to: both are left out)."""
    values = frame[check.column]
    if check.change.set is not None:
        out = frame[(values.astype(str) != str(check.change.set)).to_numpy()].copy()
    else:
        out = frame[pd.to_numeric(values, errors="coerce").notna().to_numpy()].copy()
    out[check.column] = changed_values(out[check.column], check)
    return out


def changed_values(values: pd.Series, check: DirectionalCheck) -> list[Any] | pd.Series:
    """``values`` after the check's change (whole numbers stay whole)."""
    change = check.change
    if change.set is not None:
        return [change.set] * len(values)
    numbers = pd.to_numeric(values, errors="coerce")
    out = numbers + change.add if change.add is not None else numbers * float(change.multiply)  # type: ignore[arg-type]
    known = numbers.dropna()
    if pd.api.types.is_integer_dtype(values.dtype) or (
        len(known) and all(float(v).is_integer() for v in known)
    ):
        out = out.round().astype("int64" if out.notna().all() else "Int64")
    return out


def directional(
    predictor: Predictor, check: DirectionalCheck, frame: pd.DataFrame, examples: int
) -> CheckResult:
    """The mean must move the expected way, and at least ``min_share`` of the records
    must not move the other way by more than the tolerance."""
    if _classes(predictor) is not None and (
        check.of_class is None or check.of_class not in _classes(predictor)  # type: ignore[operator]
    ):
        return CheckResult(
            "directional",
            check.name,
            False,
            f"of_class {check.of_class!r} is not a class of the model "
            f"({', '.join(_classes(predictor) or [])})",
        )
    after = changed(frame, check)
    if after.empty:
        return CheckResult(
            "directional", check.name, False, f"no record has a {check.column} the change moves"
        )
    before = frame.loc[after.index]
    try:
        delta = _of(predictor, outputs(predictor, after), check.of_class) - _of(
            predictor, outputs(predictor, before), check.of_class
        )
    except (DataError, PredictionError, ValueError) as exc:
        return broken("directional", check.name, exc)
    what = f"P({check.of_class})" if check.of_class else "the prediction"
    return directional_result(check, delta, before, after, what, examples)


def directional_result(
    check: DirectionalCheck,
    delta: np.ndarray,
    before: pd.DataFrame,
    after: pd.DataFrame,
    what: str,
    examples: int,
    unit: str = "record",
) -> CheckResult:
    """The verdict on how each answer moved (``before``/``after``: one record per answer)."""
    sign = 1.0 if check.expect == "up" else -1.0
    against = sign * delta < -check.tolerance
    share = 1.0 - float(against.mean())
    mean = float(delta.mean())
    detail = (
        f"{what} moved by {mean:+.4f} on average (expected {check.expect}); "
        f"{share:.0%} of {len(delta)} {unit}(s) did not move the other way "
        f"(needs {check.min_share:.0%})"
    )
    shown = [
        {
            **_record(before, i, [check.column]),
            "changed_to": plain(after.iloc[i][check.column]),
            "moved": round(float(delta[i]), 4),
        }
        for i in np.argsort(sign * delta)[:examples]
        if against[i]
    ]
    return CheckResult(
        "directional", check.name, sign * mean > 0 and share >= check.min_share, detail, shown
    )


def _record(frame: pd.DataFrame, i: int, first: list[str]) -> dict[str, Any]:
    """Record ``i`` of ``frame`` as JSON-able values, the ``first`` columns first."""
    row = {k: plain(v) for k, v in frame.iloc[i].to_dict().items()}
    return {**{c: row[c] for c in first}, **{k: v for k, v in row.items() if k not in first}}


def plain(value: Any) -> Any:
    """A numpy scalar as Python's; a missing value as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
