"""The keys rayops writes on MLflow runs and model versions, and the aliases it moves:
one constant each, so every reader and writer names the same key."""

from __future__ import annotations

# The aliases: what serving answers with, and what passed the gate beside it.
from rayops.config.serving import CHALLENGER as CHALLENGER
from rayops.config.serving import CHAMPION as CHAMPION

# On every run.
KIND_TAG = "rayops.kind"  # ingest, sweep, operate, monitor (a training run has none)
VERSION_TAG = "rayops.version"  # the rayops that wrote it
DATASET_TAG = "rayops.dataset_version"  # the curated dataset version it read or wrote

# On a sweep and its trials.
TRIAL_TAG = "rayops.trial_id"
TRIAL_CONFIG_TAG = "rayops.trial_config"  # the values a trial sampled, JSON
MODEL_URI_TAG = "rayops.model_uri"
BEST_RUN_TAG = "rayops.best_run_id"  # on the sweep: its best trial's run
STOPPED_TAG = "rayops.stopped"  # on a trial the scheduler stopped early
SAMPLER_TAG = "rayops.search.sampler"
TRIALS_TOLD_TAG = "rayops.search.trials_told"  # finished trials a resumed search was told

# On a model version: the run that made it, the gate's verdict (set before @challenger moves
# to it) and its figures, and why a version that passed was withdrawn later (refused in
# shadow or on served traffic, rolled back, its cycle abandoned). A replica canaries or
# shadows only a passed version that was not withdrawn.
RUN_ID_TAG = "rayops.run_id"
PASSED_TAG = "rayops.gate.passed"
PROMOTED_TAG = "rayops.gate.promoted"
GATE_DATASET_TAG = "rayops.gate.dataset"
GATE_METRIC_TAG = "rayops.gate.metric"
GATE_SCORE_TAG = "rayops.gate.score"
GATE_CHAMPION_SCORE_TAG = "rayops.gate.champion_score"
GATE_REASON_TAG = "rayops.gate.reason"
CHECKS_TAG = "rayops.gate.checks"  # passed, or failed: the failing checks' names
WITHDRAWN_TAG = "rayops.withdrawn"
PREVIOUS_TAG = "rayops.previous_champion"  # on the registered model: what rollback restores

# On an operate cycle's run.
CYCLE_TAG = "rayops.operate.cycle"
STEP_TAG = "rayops.operate.step"
OUTCOME_TAG = "rayops.operate.outcome"
REASONS_TAG = "rayops.operate.reasons"
STOPPED_AT_TAG = "rayops.operate.stopped_at"
ERROR_TAG = "rayops.operate.error"
ABANDONED_AT_TAG = "rayops.operate.abandoned_at"

# On a monitor run.
DRIFT_VERDICT_TAG = "rayops.drift_verdict"
