"""Apply a model bundle to raw records: validate, transform, predict, decode."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rayops.config import ColumnSpec
from rayops.data.preprocess import Preprocessor
from rayops.data.validate import first_error, validate_frame, validate_records
from rayops.errors import DataError, PredictionError
from rayops.models import Bundle

if TYPE_CHECKING:
    from rayops.config import TrackingConfig
    from rayops.tracking import RegisteredModel


class Predictor:
    """Raw feature records in, class + probabilities (or a value) out."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.preprocessor = Preprocessor.from_dict(bundle.meta["preprocessor"])
        self.schema = {n: ColumnSpec.model_validate(s) for n, s in bundle.meta["schema"].items()}
        self.features = [n for n in self.schema if n != self.preprocessor.label]
        self.feature_specs = {n: self.schema[n] for n in self.features}  # per request

    @classmethod
    def load(cls, folder: Path) -> Predictor:
        return cls(Bundle.load(folder))

    @classmethod
    def from_registry(cls, tracking_cfg: TrackingConfig, model: RegisteredModel) -> Predictor:
        """A registered version's predictor; the downloaded files are removed once loaded
        (the bundle lives in memory)."""
        from rayops import tracking

        with tempfile.TemporaryDirectory(prefix="rayops-model-") as folder:
            return cls.load(tracking.download_bundle(tracking_cfg, model, Path(folder)))

    @property
    def task(self) -> str:
        return self.preprocessor.task

    def matrix(self, records: pd.DataFrame) -> np.ndarray:
        """Validated, transformed input matrix; raises DataError naming the bad record."""
        missing = [n for n in self.features if n not in records.columns]
        if missing:
            raise DataError(f"records lack the feature column(s) {missing}")
        return self._checked(validate_frame(records[self.features], self.feature_specs))

    def _checked(self, typed: pa.Table) -> np.ndarray:
        bad = first_error(typed)
        if bad is not None:
            raise DataError(f"record {bad[0]}: {bad[1]}")
        return self.preprocessor.transform(typed)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, or the standardized value as one column, for a feature
        matrix (whatever the model family)."""
        out = self.bundle.model.outputs(x, self.preprocessor.rules.probabilities)
        if not np.isfinite(out).all():  # a diverged model: fail, never answer NaN
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise PredictionError(
                f"the model gave non-finite outputs for {bad} of {len(out)} record(s)"
            )
        return out

    def predict_matrix(self, x: np.ndarray) -> list[dict[str, Any]]:
        pre = self.preprocessor
        return pre.rules.answers(self.outputs(x), pre.label_state)

    def predict(self, records: pd.DataFrame) -> list[dict[str, Any]]:
        return self.predict_matrix(self.matrix(records))

    def predict_valid(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`predict_records` for records the request's schema (built by
        :func:`rayops.serve.bodies.record_model` from this model's schema) has already
        checked: typed, in range, known categories, present where required. Skips the
        second validation and Arrow: the small-request path of a replica."""
        return self.predict_matrix(self.preprocessor.transform_rows(records))

    def predict_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`predict` for records as a request carries them (dicts of feature values)."""
        return self.predict_matrix(self._checked(validate_records(records, self.feature_specs)))
