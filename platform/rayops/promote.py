"""Challenger vs champion: a new model is registered as ``challenger`` and becomes
``champion`` only if it beats the current champion on the same validation data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion
from rayops.errors import TrainingError
from rayops.evaluate import score
from rayops.predict import Predictor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate, with the scores both models got on the same rows."""

    challenger: tracking.RegisteredModel
    champion: tracking.RegisteredModel
    previous: tracking.RegisteredModel | None
    metric: str
    challenger_score: float
    champion_score: float | None
    promoted: bool

    def summary(self) -> str:
        c = self.challenger
        if self.previous is None:
            return f"{c.name} v{c.version} is the first champion ({self.metric}=" \
                   f"{self.challenger_score:.4f})"
        verdict = "promoted to champion" if self.promoted else (
            f"champion stays v{self.champion.version}")
        shown = "n/a" if self.champion_score is None else f"{self.champion_score:.4f}"
        return (f"challenger {c.name} v{c.version} {self.metric}={self.challenger_score:.4f} "
                f"vs champion v{self.previous.version} {shown}: {verdict}")


def _score(cfg: PipelineConfig, model: tracking.RegisteredModel,
           version: DatasetVersion) -> float | None:
    """The model's target metric on the version's validation rows (None if it cannot be
    applied, e.g. the champion expects columns the data no longer has)."""
    metric, _ = cfg.target_metric
    try:
        predictor = Predictor.load(tracking.download_bundle(cfg.tracking, model))
        return score(predictor, version.table("valid")).metrics[metric]
    except Exception as exc:
        logger.warning("Could not score %s v%s on %s: %s", model.name, model.version,
                       version.id, exc)
        return None


def register_and_gate(cfg: PipelineConfig, model_uri: str, run_id: str,
                      version: DatasetVersion) -> Decision:
    """Register as challenger; promote to champion if strictly better (or if first)."""
    metric, mode = cfg.target_metric
    name = cfg.model_name
    previous = tracking.alias_or_none(cfg.tracking, name, tracking.CHAMPION)
    challenger = tracking.register(cfg.tracking, name, model_uri, run_id, tracking.CHALLENGER)
    challenger_score = _score(cfg, challenger, version)
    if challenger_score is None:
        raise TrainingError(f"the new model v{challenger.version} cannot be scored on "
                           f"{version.id}")
    champion_score = _score(cfg, previous, version) if previous else None
    better = champion_score is None or (challenger_score > champion_score if mode == "max"
                                        else challenger_score < champion_score)
    if better:
        tracking.promote(cfg.tracking, name, challenger.version)
        champion = tracking.RegisteredModel(name, challenger.version, tracking.CHAMPION,
                                            run_id, model_uri)
    else:
        assert previous is not None
        champion = previous
    decision = Decision(challenger, champion, previous, metric, challenger_score,
                        champion_score, better)
    tracking.tag_version(cfg.tracking, name, challenger.version, {
        "rayops.gate.dataset": version.id, "rayops.gate.metric": metric,
        "rayops.gate.score": f"{challenger_score:.6f}",
        "rayops.gate.champion_score": "" if champion_score is None else f"{champion_score:.6f}",
        "rayops.gate.promoted": str(better).lower()})
    logger.info(decision.summary())
    return decision
