"""Model families and the on-disk bundle every family shares: model files plus JSON, never
a pickle.

A family (:class:`rayops.models.family.Family`, found by name in :mod:`rayops.families`)
trains on Ray Train, saves and loads its model and predicts: ``mlp`` (a PyTorch network,
``weights.pt`` loaded with ``torch.load(weights_only=True)``) and ``xgboost`` (``model.ubj``,
an XGBoost UBJSON document). A bundle is a folder with the family's model files and
``bundle.json`` (architecture with its ``family``, fitted preprocessing, input schema,
metrics, dataset version). Serving, the gate and the MLflow pyfunc load it the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayops.errors import TrainingError
from rayops.families import family_named
from rayops.models.family import Family, LoopConfig, Model
from rayops.models.mlp import MLP, WEIGHTS, MLPModel, build_model, load_state_dict

BUNDLE = "bundle.json"


def family_of(spec: dict[str, Any]) -> str:
    return str(spec.get("family", "mlp"))  # bundles from before families were MLPs


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
        spec = meta["architecture"]
        try:
            family = family_named(family_of(spec))
        except Exception as exc:
            raise TrainingError(f"{str(folder)!r}: {exc}") from None
        return cls(family.load(folder, spec), meta)


__all__ = [
    "BUNDLE",
    "MLP",
    "WEIGHTS",
    "Bundle",
    "Family",
    "LoopConfig",
    "MLPModel",
    "Model",
    "build_model",
    "family_of",
    "load_state_dict",
]
