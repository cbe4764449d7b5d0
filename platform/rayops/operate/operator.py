"""The retraining loop: cycles of ingest -> monitor -> decide -> retrain -> gate -> shadow
-> promote -> watch, each cycle one MLflow run (tagged ``rayops.kind=operate``) with its
inputs, decision, reasons and outcome.

The cycle's state is saved after every step (and a long step's progress within it), so an
operator that crashed or was stopped resumes the cycle at the step it was in: a training
run continues from its checkpoints, a shadow keeps its start time. Only the holder of the
pipeline's lease runs it, and promotion moves ``champion`` only while the lease is held and
the alias still names the version the challenger was gated against. Any error a step did
not expect stops the operator with the cycle unfinished: nothing is promoted on it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.ingest import ingest_retrying
from rayops.data.table import open_table
from rayops.data.versions import load_version, version_number
from rayops.gate import window_verdict
from rayops.monitor.feedback import (
    feedback_table,
    labelled_window,
    live_metrics,
    prediction_table,
)
from rayops.monitor.gauges import drift_gauges
from rayops.monitor.report import monitor_records, read_window
from rayops.operate.proving import Proving
from rayops.operate.signals import (
    Signals,
    decide,
)
from rayops.operate.state import CycleState, Lease, StateStore, now_iso
from rayops.pipeline import train_and_register
from rayops.serve.prediction_log import read_log
from rayops.storage import root_of
from rayops.tasks import task_of

logger = logging.getLogger(__name__)


class Operator(Proving):
    """Runs a pipeline's cycles; ``say`` prints its progress lines."""

    def __init__(
        self, cfg: PipelineConfig, say: Callable[[str], None] | None = None, poll_s: float = 2.0
    ) -> None:
        self.cfg = cfg
        folder = root_of(cfg.storage).join("operate", cfg.name)
        self.store = StateStore(folder)
        self.lease = Lease(folder, cfg.operate.lease_s)
        self.say = say or logger.info
        self.poll_s = poll_s
        self.metric, self.mode = cfg.gate_metric
        self.gauges = drift_gauges()

    # ------------------------------------------------------------------ the loop

    def run(self, cycles: int | None = None) -> CycleState:
        """Run cycles (forever when None) every ``operate.interval_s``; a cycle left
        unfinished by a stopped operator is finished first."""
        self.cfg.check_operate()
        self.lease.acquire(wait_s=self.cfg.operate.lease_s)
        try:
            state, done = self.store.load(), 0
            while cycles is None or done < cycles:
                if done:
                    self.say(f"next cycle in {self.cfg.operate.interval_s:.0f} s")
                    time.sleep(self.cfg.operate.interval_s)
                state = self.cycle(self.store.load())
                done += 1
            return state
        finally:
            self.lease.release()

    def cycle(self, state: CycleState) -> CycleState:
        """Finish ``state``'s cycle, or run a new one when it is finished."""
        if state.finished:
            state = self._start(state)
        else:
            self.say(f"[cycle {state.cycle}] resuming at step {state.step!r}")
        while not state.finished:
            step = state.step
            try:
                state.step = getattr(self, f"_{step}")(state)
            except BaseException as exc:  # the cycle stays at this step, for a resume
                self._tag(
                    state,
                    {
                        tracking.STOPPED_AT_TAG: step,
                        tracking.ERROR_TAG: f"{type(exc).__name__}: {exc}"[:500],
                    },
                )
                raise
            self.store.save(state)
            self._tag(state, {tracking.STEP_TAG: state.step})
        self._finish(state)
        return state

    def _start(self, previous: CycleState) -> CycleState:
        number = previous.cycle + 1
        run_id = tracking.start_run(
            self.cfg.tracking,
            self.cfg.experiment_name,
            f"{self.cfg.name}-operate-{number}",
            params={"operate": self.cfg.operate.model_dump(mode="json")},
            tags={tracking.KIND_TAG: "operate", tracking.CYCLE_TAG: str(number)},
        )
        state = CycleState(
            number,
            "ingest",
            run_id,
            {"started_at": now_iso()},
            previous.drift_streak,
            previous.cycles_since_retrain,
            previous.last_retrain_at,
        )
        self.store.save(state)
        self.say(f"[cycle {number}] started (MLflow run {run_id})")
        return state

    def _finish(self, state: CycleState) -> None:
        facts = state.facts
        outcome = facts.get("outcome", "no retrain")
        self.say(f"[cycle {state.cycle}] {outcome}")
        if state.run_id is None or facts.get("logged"):
            return
        numbers = {
            k: float(v)
            for k, v in facts.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        tracking.log_metrics(self.cfg.tracking, state.run_id, numbers, step=state.cycle)
        tracking.log_dict(self.cfg.tracking, state.run_id, facts, "operate/cycle.json")
        self._tag(
            state,
            {
                tracking.OUTCOME_TAG: outcome[:500],
                tracking.REASONS_TAG: "; ".join(facts.get("reasons", []))[:500] or "none",
            },
        )
        tracking.end_run(self.cfg.tracking, state.run_id)
        facts["logged"] = True
        self.store.save(state)

    def _tag(self, state: CycleState, tags: dict[str, str]) -> None:
        if state.run_id is not None:
            tracking.set_tags(self.cfg.tracking, state.run_id, tags)

    # ------------------------------------------------------------------ the steps

    def _ingest(self, state: CycleState) -> str:
        version = ingest_retrying(self.cfg)  # beside `ingest --watch`, a lost race is normal
        state.facts["dataset"] = version.id
        self.say(
            f"[cycle {state.cycle}] ingest: dataset {version.id} "
            f"({version.manifest.rows.train} training rows)"
        )
        return "monitor"

    def _monitor(self, state: CycleState) -> str:
        hours = self.cfg.operate.window_hours
        if open_table(prediction_table(self.cfg)) is None:
            verdict, detail = None, "nothing served yet"
        else:
            window = read_window(self.cfg, hours)
            if window.empty:
                verdict, detail = "insufficient data", f"no request in the last {hours:g} h"
            else:
                result = monitor_records(self.cfg, window)
                verdict = result.report.verdict
                detail = (
                    f"{result.report.rows} records, drifted: "
                    f"{', '.join(result.report.drifted) or 'none'} "
                    f"(MLflow run {result.run_id})"
                )
                state.facts["monitor_run_id"] = result.run_id
                if self.gauges is not None:
                    self.gauges.set(self.cfg.name, result.report)
        if verdict == "drift":
            state.drift_streak += 1
        elif verdict in ("ok", "warn"):
            state.drift_streak = 0
        state.facts["drift"] = verdict or "no traffic"
        state.facts["drift_streak"] = state.drift_streak
        self.say(
            f"[cycle {state.cycle}] monitor: {verdict or 'no traffic'} ({detail}); "
            f"drifted windows in a row: {state.drift_streak}"
        )
        return "decide"

    def _decide(self, state: CycleState) -> str:
        champion = tracking.alias_or_none(self.cfg.tracking, self.cfg.model_name, tracking.CHAMPION)
        live = None
        if champion is not None:
            values = live_metrics(self.cfg, self.cfg.operate.window_hours).get(champion.version, {})
            live = values.get(f"live_{self.metric.removeprefix('valid_')}")
        signals = Signals(
            state.facts.get("drift"),
            state.drift_streak,
            self._new_labels(state),
            live,
            state.cycles_since_retrain,
        )
        reasons = decide(self.cfg.operate, self.metric, self.mode, signals)
        if champion is None:
            reasons.append("no champion yet")
        state.facts.update(new_labels=signals.new_labels, reasons=reasons)
        if live is not None:
            state.facts["live_metric"] = live
        if not reasons:
            state.cycles_since_retrain += 1
            state.facts["outcome"] = "no retrain: no signal"
            self.say(
                f"[cycle {state.cycle}] decide: no retrain ({signals.new_labels} new "
                f"labels, live metric {'n/a' if live is None else f'{live:.4f}'})"
            )
            return "done"
        self.say(f"[cycle {state.cycle}] decide: retrain, because " + "; ".join(reasons))
        return "retrain"

    def _new_labels(self, state: CycleState) -> int:
        since = dt.datetime.fromisoformat(state.last_retrain_at) if state.last_retrain_at else None
        rows = read_log(feedback_table(self.cfg), ["request_id"], since)
        return 0 if rows is None else rows.num_rows

    def _retrain(self, state: CycleState) -> str:
        facts = state.facts
        resume = "retrain_record" in facts
        if not resume:  # this cycle's own run, named before it starts: a resume finds it
            facts["retrain_started_at"] = now_iso()
            previous = tracking.alias_or_none(
                self.cfg.tracking, self.cfg.model_name, tracking.CHAMPION
            )
            facts["champion"] = previous.version if previous else None
            facts["retrain_record"] = (
                f"{self.cfg.name}-operate-{state.cycle}-{uuid.uuid4().hex[:6]}"
            )
            self.store.save(state)
        version = load_version(self.cfg, version_number(facts["dataset"]))
        kind = "sweep" if self.cfg.operate.sweep else "training"
        self.say(
            f"[cycle {state.cycle}] retrain: {kind} on {version.id}"
            + (f" (continuing {facts['retrain_record']})" if resume else "")
        )
        result = train_and_register(
            self.cfg,
            version,
            sweep=self.cfg.operate.sweep,
            resume=resume,
            promote=False,
            record_name=facts["retrain_record"],
        )
        decision = result.decision
        state.cycles_since_retrain, state.last_retrain_at = 0, facts["retrain_started_at"]
        facts.update(
            challenger=decision.challenger.version,
            train_run_id=result.run_id,
            gate_passed=decision.passed,
            gate_reason=decision.reason,
            challenger_score=decision.challenger_score,
        )
        if decision.champion_score is not None:
            facts["champion_score"] = decision.champion_score
        self.say(f"[cycle {state.cycle}] gate: {decision.summary()}")
        if not decision.passed:
            facts["outcome"] = (
                f"v{decision.challenger.version} refused by the gate: {decision.reason}"
            )
            return "done"
        return "gate" if facts["champion"] else "promote"  # a first model: nothing to shadow

    def _gate(self, state: CycleState) -> str:
        """The challenger against the champion on the labelled window of served traffic."""
        facts = state.facts
        if (moved := self._world_moved(state, "window gate")) is not None:
            return moved
        if not task_of(self.cfg.data.task).scores_served_records:
            facts["window_gate"] = (
                f"not applicable to {self.cfg.data.task}: the gate "
                "scored both models on the newest validation period"
            )
            self.say(f"[cycle {state.cycle}] window gate {facts['window_gate']}")
            return "shadow"
        champion = self._predictor(facts["champion"])
        rows = labelled_window(self.cfg, champion.schema, self.cfg.operate.window_hours)
        if rows.num_rows < self.cfg.operate.window_min_labels:
            facts["window_gate"] = (
                f"skipped: {rows.num_rows} labelled served record(s), "
                f"fewer than operate.window_min_labels "
                f"({self.cfg.operate.window_min_labels})"
            )
            self.say(f"[cycle {state.cycle}] window gate {facts['window_gate']}")
            return "shadow"
        passed, reason, scores = window_verdict(
            self.cfg, self._predictor(facts["challenger"]), champion, rows
        )
        facts.update(scores, window_gate=reason)
        self.say(
            f"[cycle {state.cycle}] window gate: {'passed' if passed else 'refused'}, {reason}"
        )
        if not passed:
            return self._refused(state, f"refused on the labelled window: {reason}")
        return "shadow"

    # ------------------------------------------------------------------ by hand

    def abandon(self, why: str = "abandoned by hand") -> CycleState:
        """End the unfinished cycle where it stands (``rayops operate --abandon``): its
        challenger, if not promoted, leaves @challenger; nothing is promoted; the next
        cycle starts fresh. Takes the lease first: a running operator is not overruled."""
        self.lease.acquire()
        try:
            state = self.store.load()
            if state.finished:
                self.say(f"[cycle {state.cycle}] finished already: nothing to abandon")
                return state
            step, facts = state.step, state.facts
            facts["outcome"] = f"{why} at step {step!r}"
            if (
                facts.get("challenger")
                and step in ("gate", "shadow", "promote")
                and self._alias(tracking.CHAMPION) != facts["challenger"]
            ):
                tracking.withdraw(
                    self.cfg.tracking,
                    self.cfg.model_name,
                    facts["challenger"],
                    f"its operate cycle {state.cycle} was {why}",
                )
                facts["outcome"] += f"; v{facts['challenger']} withdrawn"
            state.step = "done"
            self.store.save(state)
            self._tag(state, {tracking.STEP_TAG: "done", tracking.ABANDONED_AT_TAG: step})
            self._finish(state)
            return state
        finally:
            self.lease.release()


def operate(
    cfg: PipelineConfig, cycles: int | None = None, say: Callable[[str], None] | None = None
) -> CycleState:
    """Run the loop on the connected Ray cluster (``cycles`` None: until stopped)."""
    return Operator(cfg, say).run(cycles)
