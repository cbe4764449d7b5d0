"""Gradient-boosted trees (XGBoost) as a model family.

The booster is stored in XGBoost's own UBJSON format (``model.ubj``) and loaded with
``Booster.load_model``: a file that is not a JSON/UBJSON document (a pickle, say) is refused
before XGBoost reads it, so loading a model never unpickles anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rayops.errors import TrainingError
from rayops.families import BUILT_IN_TASKS, register_family
from rayops.models.family import Family

if TYPE_CHECKING:
    import xgboost
    from ray.train import Checkpoint

    from rayops.config import PipelineConfig

MODEL_FILE = "model.ubj"
# JSON and UBJSON documents both open an object with "{"; a pickle starts with 0x80.
_DOCUMENT_START = b"{"


def require_xgboost() -> Any:
    """The xgboost module, or an error that says how to install it."""
    try:
        import xgboost
    except ImportError:
        raise TrainingError(
            "model.family 'xgboost' needs the xgboost package: pip install xgboost-cpu "
            "(CPU only, small) or xgboost (with CUDA, for use_gpu)"
        ) from None
    return xgboost


def pip_requirements() -> list[str]:
    """The XGBoost distribution installed here (xgboost-cpu, or xgboost with CUDA), pinned,
    for the MLflow model's requirements."""
    from importlib import metadata

    for distribution in ("xgboost-cpu", "xgboost"):
        try:
            return [f"{distribution}=={metadata.version(distribution)}"]
        except metadata.PackageNotFoundError:
            continue
    return ["xgboost"]


def load_booster(raw: bytes, name: str) -> xgboost.Booster:
    """A booster from the bytes of a JSON/UBJSON model file; refuses anything else."""
    if not raw.startswith(_DOCUMENT_START):
        raise TrainingError(
            f"refusing to load {name!r}: not an XGBoost JSON/UBJSON model "
            f"(starts with {raw[:4]!r}; pickled models are never loaded)"
        )
    xgb = require_xgboost()
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
    except xgb.core.XGBoostError as exc:
        raise TrainingError(
            f"refusing to load {name!r}: not a valid XGBoost model ({str(exc).splitlines()[0]})"
        ) from None
    return booster


class XGBoostModel:
    """A trained booster as a :class:`rayops.models.family.Model`."""

    family = "xgboost"

    def __init__(self, booster: xgboost.Booster) -> None:
        self.booster = booster

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> XGBoostModel:
        path = folder / MODEL_FILE
        if not path.exists():
            raise TrainingError(f"{str(folder)!r} holds no {MODEL_FILE}")
        return cls(load_booster(path.read_bytes(), str(path)))

    def save(self, folder: Path) -> None:
        self.booster.save_model(str(folder / MODEL_FILE))

    def outputs(self, x: np.ndarray, probabilities: bool) -> np.ndarray:
        """Class probabilities, or the task's encoded values (one column, or one per
        quantile of a forecast)."""
        out = np.asarray(self.booster.inplace_predict(x))
        return out if probabilities else out.reshape(len(x), -1)


class XGBoostFamily(Family):
    """Gradient-boosted trees with Ray Train's XGBoostTrainer
    (:mod:`rayops.models.xgboost_loop`)."""

    name = "xgboost"
    tasks = BUILT_IN_TASKS["xgboost"]
    step = "round"
    in_process = True

    def architecture(
        self, cfg: PipelineConfig, n_inputs: int, n_outputs: int, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "family": self.name,
            "n_inputs": n_inputs,
            "n_outputs": n_outputs,
            **cfg.model.xgboost.model_dump(),
        }

    def length(self, cfg: PipelineConfig) -> int:
        return cfg.model.xgboost.max_rounds

    def trainer(self) -> tuple[Any, Callable[[dict[str, Any]], None]]:
        require_xgboost()
        from ray.train.xgboost import XGBoostTrainer

        from rayops.models.xgboost_loop import xgboost_fn_per_worker

        return XGBoostTrainer, xgboost_fn_per_worker

    def trained_model(self, folder: Path, architecture: dict[str, Any]) -> XGBoostModel:
        return XGBoostModel.load(folder, architecture)  # a checkpoint holds model.ubj too

    def history(
        self, cfg: PipelineConfig, run_name: str, newest: Checkpoint | None
    ) -> list[dict[str, float]]:
        from rayops.models.xgboost_loop import history_of

        return history_of(newest)

    def load(self, folder: Path, architecture: dict[str, Any]) -> XGBoostModel:
        return XGBoostModel.load(folder, architecture)

    def pip_requirements(self) -> list[str]:
        return pip_requirements()


register_family(XGBoostFamily())
