"""MLflow pyfunc entry point for rayops models (MLflow "models from code").

MLflow executes this file when it loads a logged rayops model, which is why, unlike every
other module, it registers the model object at import: that is MLflow's contract for
models-from-code. Nothing here is imported by rayops itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from rayops.forecast import forecast_frame
from rayops.predict import Predictor
from rayops.recommend import recommend_frame


class RayopsModel(PythonModel):
    """Raw records (a DataFrame of feature columns) in, predictions out; for a forecaster,
    observations of series in, forecasts out (:func:`rayops.forecast.forecast_frame`); for
    a recommender, users' interactions in, their top items out
    (:func:`rayops.recommend.recommend_frame`)."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if self.predictor.preprocessor.series is not None:  # observations in, forecasts out
            return forecast_frame(self.predictor, model_input)
        if self.predictor.preprocessor.interactions is not None:  # a user's, top items out
            return recommend_frame(self.predictor, model_input)
        rows = self.predictor.predict(model_input)
        return pd.DataFrame(
            [
                {
                    "prediction": r["prediction"],
                    **{f"probability_{c}": p for c, p in r.get("probabilities", {}).items()},
                }
                for r in rows
            ]
        )


mlflow.models.set_model(RayopsModel())
