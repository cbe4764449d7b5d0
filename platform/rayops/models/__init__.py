"""Model families and the on-disk bundle every family shares: model files plus JSON, never
a pickle.

A bundle is a folder with the family's model file (``weights.pt``, a state dict loaded with
``torch.load(weights_only=True)``; or ``model.ubj``, an XGBoost UBJSON document) and
``bundle.json`` (architecture with its ``family``, fitted preprocessing, input schema,
metrics, dataset version). Serving, the gate and the MLflow pyfunc load it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rayops.errors import TrainingError
from rayops.models.mlp import MLP, WEIGHTS, MLPModel, build_model, load_state_dict

BUNDLE = "bundle.json"
FAMILIES = ("mlp", "xgboost")


class Model(Protocol):
    """What ``predict``, ``evaluate`` and serving need of a trained model."""

    family: str

    def save(self, folder: Path) -> None: ...

    def outputs(self, x: np.ndarray, classification: bool) -> np.ndarray:
        """Class probabilities (rows sum to 1), or the standardized value as one column."""
        ...


def family_of(spec: dict[str, Any]) -> str:
    return str(spec.get("family", "mlp"))  # bundles from before families were MLPs


def _load_model(folder: Path, spec: dict[str, Any]) -> Model:
    family = family_of(spec)
    if family == "mlp":
        return MLPModel.load(folder, spec)
    if family == "xgboost":
        from rayops.models.xgboost import XGBoostModel

        return XGBoostModel.load(folder, spec)
    raise TrainingError(f"{str(folder)!r}: unknown model family {family!r} "
                        f"(known: {', '.join(FAMILIES)})")


@dataclass(frozen=True)
class Bundle:
    """A trained model with everything needed to apply it to raw records."""

    model: Model
    meta: dict[str, Any]

    @property
    def family(self) -> str:
        return self.model.family

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder)
        (folder / BUNDLE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Bundle:
        meta_path = folder / BUNDLE
        if not meta_path.exists():
            raise TrainingError(f"{str(folder)!r} is not a rayops model bundle (no {BUNDLE})")
        meta = json.loads(meta_path.read_text())
        return cls(_load_model(folder, meta["architecture"]), meta)


__all__ = ["BUNDLE", "FAMILIES", "MLP", "WEIGHTS", "Bundle", "MLPModel", "Model",
           "build_model", "family_of", "load_state_dict"]
