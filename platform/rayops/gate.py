"""The promotion gate: a new model is registered, scored against the current champion on
the same validation rows, and becomes ``challenger`` (and ``champion``, when promoting)
only if it beats it by the configured margins (``gate`` section).

The gate fails closed. ``@challenger`` only ever names a version that passed, so a
replica's canary or shadow never serves a model the gate refused (replicas check the
version's ``rayops.gate.passed`` tag too). Both models are scored on the same rows whenever
both can read them (another range, nullability or set of categories does not stop that);
a challenger goes through without a comparison only when the champion truly cannot be
scored: another task or label, a feature the rows lack or read as another type, or its
files are gone; that reason is tagged on the version. Any other error (the store or the
registry down, a timeout) fails the command: nothing moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from rayops import tracking
from rayops.checks import CheckReport, failed_reason, record, run_checks
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion
from rayops.errors import GateError, ModelFilesMissing, RayopsError
from rayops.evaluate import score
from rayops.predict import Predictor
from rayops.tasks.scoring import label_strings

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
    reason: str
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    passed: bool = False  # cleared the gate (promoted unless the caller promotes later)

    def summary(self) -> str:
        c = self.challenger
        verdict = (
            "promoted to champion"
            if self.promoted
            else (
                "passed the gate, stays @challenger for now"
                if self.passed
                else f"champion stays v{self.champion.version}"
            )
        )
        if self.champion_score is None:
            return (
                f"{c.name} v{c.version} {self.metric}={self.challenger_score:.4f} "
                f"{verdict}: {self.reason}"
            )
        assert self.previous is not None
        return (
            f"challenger {c.name} v{c.version} {self.metric}={self.challenger_score:.4f} "
            f"vs champion v{self.previous.version} {self.champion_score:.4f}: {verdict} "
            f"({self.reason})"
        )


def not_comparable(challenger: Predictor, champion: Predictor, rows: pa.Table) -> str | None:
    """Why the champion cannot be scored on the challenger's validation ``rows``, or None
    when both models can be (their schemas may still differ in ranges, nullability or
    categories: each model applies its own preprocessing to the same typed rows)."""
    if challenger.task != champion.task:
        return f"champion is a {champion.task} model, the challenger {challenger.task}"
    if challenger.preprocessor.label != champion.preprocessor.label:
        return (
            f"champion predicts {champion.preprocessor.label!r}, the challenger "
            f"{challenger.preprocessor.label!r}"
        )
    missing = [f for f in champion.features if f not in rows.column_names]
    if missing:
        return f"champion reads feature(s) {missing}, which the validation rows lack"
    for name in champion.features:
        theirs, ours = champion.schema[name].type, challenger.schema.get(name)
        if ours is not None and ours.type != theirs:
            return f"feature {name!r} is {theirs} for the champion, {ours.type} now"
    return None


def common_rows(challenger: Predictor, champion: Predictor, rows: pa.Table) -> pa.Table:
    """For classifiers that know other classes, the rows whose label both know (a row of a
    class one never saw would count only against it, or only for the other)."""
    known = sorted(set(challenger.preprocessor.classes) & set(champion.preprocessor.classes))
    labels = label_strings(rows.column(challenger.preprocessor.label))
    return rows.filter(pc.is_in(labels, value_set=pa.array(known, pa.string())))


def _improvement(challenger: float, champion: float, mode: str) -> float:
    return challenger - champion if mode == "max" else champion - challenger


def verdict(
    cfg: PipelineConfig, challenger: dict[str, float], champion: dict[str, float]
) -> tuple[bool, str]:
    """Whether the challenger's metrics clear the gate against the champion's, and why."""
    gate = cfg.gate
    metric, mode = cfg.gate_metric
    gain = _improvement(challenger[metric], champion[metric], mode)
    needed = max(gate.min_improvement, gate.min_relative_improvement * abs(champion[metric]))
    if gain <= 0:
        return False, f"{metric} did not improve ({gain:+.4f})"
    if gain < needed:
        return False, f"{metric} improved by {gain:+.4f}, needs at least {needed:.4f}"
    directions = cfg.metrics
    for other, allowance in gate.max_regression.items():
        loss = -_improvement(challenger[other], champion[other], directions[other])
        if loss > allowance:
            return False, (
                f"{other} worsened by {loss:.4f}, more than gate.max_regression "
                f"allows ({allowance})"
            )
    return True, f"{metric} improved by {gain:+.4f}"


def _champion(cfg: PipelineConfig, model: tracking.RegisteredModel) -> Predictor | None:
    """The champion's predictor; None when its files are gone."""
    try:
        return Predictor.from_registry(cfg.tracking, model)
    except ModelFilesMissing as exc:
        logger.warning("%s", exc)
        return None


def register_and_gate(
    cfg: PipelineConfig, model_uri: str, run_id: str, version: DatasetVersion, promote: bool = True
) -> Decision:
    """Register the model (once per run: a resumed caller gates the version it registered
    before); if it clears the gate (or is first, or the champion is not comparable) point
    ``challenger`` at it, and ``champion`` when ``promote``. Errors fail closed with a
    :class:`GateError`. ``promote=False`` only judges: the operate loop shadows a model
    that passed first."""
    name = cfg.model_name
    previous = tracking.alias_or_none(cfg.tracking, name, tracking.CHAMPION)
    challenger = tracking.registered_version_of_run(
        cfg.tracking, name, run_id
    ) or tracking.register(cfg.tracking, name, model_uri, run_id, version.id)
    try:
        return _decide(cfg, challenger, previous, version, promote)
    except RayopsError as exc:
        raise GateError(
            f"gate of {name} v{challenger.version} failed, nothing promoted "
            f"(v{challenger.version} stays registered, unjudged"
            + (f"; @champion stays v{previous.version}" if previous else "")
            + f"): {exc}"
        ) from None
    except Exception as exc:  # an outage we did not foresee: still fail closed
        raise GateError(
            f"gate of {name} v{challenger.version} failed, nothing promoted: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _decide(
    cfg: PipelineConfig,
    challenger: tracking.RegisteredModel,
    previous: tracking.RegisteredModel | None,
    version: DatasetVersion,
    promote: bool = True,
) -> Decision:
    metric, _ = cfg.gate_metric
    rows = version.scored_rows()
    mine = Predictor.from_registry(cfg.tracking, challenger)
    champion = None if previous is None else _champion(cfg, previous)
    ours, theirs, passed, reason = _scores(cfg, mine, previous, champion, rows)
    checked: dict[str, str] = {}
    if cfg.checks.declared and cfg.checks.gate:  # whatever the metric: fail closed
        report = _checked(cfg, challenger, mine, previous, champion, version, rows)
        checked = {
            tracking.CHECKS_TAG: "passed"
            if report.passed
            else "failed: " + ", ".join(r.title for r in report.failed)
        }
        if not report.passed:
            passed, reason = False, f"{failed_reason(report)}; {reason}"
        else:
            reason = f"{reason}; checks: {report.summary()}"
    promoted = passed and promote
    tracking.tag_version(
        cfg.tracking,
        challenger.name,
        challenger.version,
        {
            tracking.GATE_DATASET_TAG: version.id,
            tracking.GATE_METRIC_TAG: metric,
            tracking.GATE_SCORE_TAG: f"{ours[metric]:.6f}",
            tracking.GATE_CHAMPION_SCORE_TAG: f"{theirs[metric]:.6f}" if theirs else "",
            tracking.GATE_REASON_TAG: reason[:5000],
            **checked,
            # before @challenger moves: a replica canaries only a version tagged as passed
            tracking.PASSED_TAG: str(passed).lower(),
        },
    )
    champion_model = previous
    if passed:
        tracking.set_alias(cfg.tracking, challenger.name, tracking.CHALLENGER, challenger.version)
    if promoted:
        tracking.promote(cfg.tracking, challenger.name, challenger.version)
        champion_model = tracking.RegisteredModel(
            challenger.name,
            challenger.version,
            tracking.CHAMPION,
            challenger.run_id,
            challenger.source,
        )
    # Tagged last: "true" only once the alias has really moved.
    tracking.tag_version(
        cfg.tracking,
        challenger.name,
        challenger.version,
        {tracking.PROMOTED_TAG: str(promoted).lower()},
    )
    if champion_model is None:  # the first model, judged only: nothing to serve before it
        champion_model = challenger
    return Decision(
        challenger,
        champion_model,
        previous,
        metric,
        ours[metric],
        theirs.get(metric),
        promoted,
        reason,
        ours,
        theirs,
        passed,
    )


def _checked(
    cfg: PipelineConfig,
    model: tracking.RegisteredModel,
    predictor: Predictor,
    previous: tracking.RegisteredModel | None,
    champion: Predictor | None,
    version: DatasetVersion,
    rows: pa.Table,
) -> CheckReport:
    """The declared checks of ``model`` on ``version`` (its scored ``rows``; slices against
    the champion when it can be scored on them; drift against the data it trained on),
    reported and logged with the model's run."""
    comparable = (
        champion
        if champion is not None and not_comparable(predictor, champion, rows) is None
        else None
    )
    report = run_checks(
        cfg,
        predictor,
        version,
        f"{model.name} v{model.version}",
        comparable,
        None if previous is None else previous.tags.get(tracking.DATASET_TAG),
        rows,
    )
    record(cfg, report, model.run_id or None)
    return report


def check_model(
    cfg: PipelineConfig, model: tracking.RegisteredModel, version: DatasetVersion
) -> CheckReport:
    """``rayops check``: the declared checks of a registered ``model`` on ``version``,
    against the current champion; the JUnit and Markdown reports logged with the model's
    run."""
    predictor = Predictor.from_registry(cfg.tracking, model)
    previous = tracking.alias_or_none(cfg.tracking, model.name, tracking.CHAMPION)
    if previous is not None and previous.version == model.version:
        previous = None  # the champion itself: nothing to compare with
    champion = None if previous is None else _champion(cfg, previous)
    return _checked(cfg, model, predictor, previous, champion, version, version.scored_rows())


def _scores(
    cfg: PipelineConfig,
    mine: Predictor,
    previous: tracking.RegisteredModel | None,
    champion: Predictor | None,
    rows: pa.Table,
) -> tuple[dict[str, float], dict[str, float], bool, str]:
    """(challenger's metrics, champion's on the same rows, passed, why)."""
    ours = score(mine, rows).metrics
    if previous is None:
        return ours, {}, True, "first champion"
    if champion is None:
        return ours, {}, True, (f"champion v{previous.version} not comparable: its files are gone")
    why = not_comparable(mine, champion, rows)
    if why is not None:
        return ours, {}, True, f"champion v{previous.version} not comparable: {why}"
    if mine.preprocessor.classes != champion.preprocessor.classes:
        # counted over every class either knows, on the rows whose class both know
        common = common_rows(mine, champion, rows)
        classes = sorted({*mine.preprocessor.classes, *champion.preprocessor.classes})
        ours, theirs = (
            score(mine, common, classes).metrics,
            score(champion, common, classes).metrics,
        )
        passed, reason = verdict(cfg, ours, theirs)
        return (
            ours,
            theirs,
            passed,
            (
                f"{reason}; on the {common.num_rows} of "
                f"{rows.num_rows} validation rows whose class both "
                f"models know, over the classes {classes}"
            ),
        )
    theirs = score(champion, rows).metrics
    passed, reason = verdict(cfg, ours, theirs)
    return ours, theirs, passed, reason


def window_verdict(
    cfg: PipelineConfig, challenger: Predictor, champion: Predictor, rows: pa.Table
) -> tuple[bool, str, dict[str, float]]:
    """The challenger against the champion on the labelled window of served traffic: it
    may be at most ``operate.window_tolerance`` worse on the gate metric."""
    metric, mode = cfg.gate_metric
    ours, theirs = score(challenger, rows).metrics[metric], score(champion, rows).metrics[metric]
    gain = _improvement(ours, theirs, mode)
    scores = {f"window_{metric}_challenger": ours, f"window_{metric}_champion": theirs}
    if gain < -cfg.operate.window_tolerance:
        return (
            False,
            (
                f"on {rows.num_rows} labelled served records {metric} is "
                f"{ours:.4f} against the champion's {theirs:.4f} (worse by "
                f"{-gain:.4f}, operate.window_tolerance {cfg.operate.window_tolerance})"
            ),
            scores,
        )
    return (
        True,
        (
            f"on {rows.num_rows} labelled served records {metric} {ours:.4f} vs the "
            f"champion's {theirs:.4f}"
        ),
        scores,
    )
