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
from rayops.errors import ConfigError
from rayops.gate import window_verdict
from rayops.monitor.feedback import (
    feedback_table,
    labelled_window,
    live_metrics,
    prediction_table,
    read_frame,
)
from rayops.monitor.gauges import drift_gauges
from rayops.monitor.report import monitor_records, read_window
from rayops.operate.signals import (
    Signals,
    decide,
    rollback_breach,
    served_stats,
    shadow_stats,
    shadow_verdict,
)
from rayops.operate.state import CycleState, Lease, OperateError, StateStore, now_iso
from rayops.pipeline import train_and_register
from rayops.predict import Predictor
from rayops.serve.prediction_log import read_log
from rayops.storage import root_of

logger = logging.getLogger(__name__)

LOG_COLUMNS = ["request_id", "record_index", "model_version", "role", "prediction", "error",
               "latency_ms"]


def check_config(cfg: PipelineConfig) -> None:
    """What the loop needs from the rest of the config, said before the first cycle."""
    op, serve = cfg.operate, cfg.serve
    if op.shadow.enabled and serve.mirror_fraction == 0:
        # a canary's answers alone cannot be compared with the champion's: only mirrored
        # records give the agreement the shadow gate needs
        raise ConfigError("operate.shadow.enabled needs serve.mirror_fraction > 0 (the share "
                          "of requests the challenger sees in shadow), e.g. 0.01, also "
                          "beside a canary_fraction; or set operate.shadow.enabled: false")
    if (op.shadow.enabled or op.rollback.watch_s > 0) and not serve.log_predictions:
        raise ConfigError("operate.shadow and operate.rollback read the prediction log: set "
                          "serve.log_predictions: true")
    if serve.shadow_alias != tracking.CHALLENGER:
        raise ConfigError(f"serve.shadow_alias is {serve.shadow_alias!r}, but the loop "
                          f"registers new models as {tracking.CHALLENGER!r}: the replicas "
                          "would never shadow them")


class Operator:
    """Runs a pipeline's cycles; ``say`` prints its progress lines."""

    def __init__(self, cfg: PipelineConfig, say: Callable[[str], None] | None = None,
                 poll_s: float = 2.0) -> None:
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
        check_config(self.cfg)
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
                self._tag(state, {"rayops.operate.stopped_at": step,
                                  "rayops.operate.error": f"{type(exc).__name__}: {exc}"[:500]})
                raise
            self.store.save(state)
            self._tag(state, {"rayops.operate.step": state.step})
        self._finish(state)
        return state

    def _start(self, previous: CycleState) -> CycleState:
        number = previous.cycle + 1
        run_id = tracking.start_run(
            self.cfg.tracking, self.cfg.experiment_name, f"{self.cfg.name}-operate-{number}",
            params={"operate": self.cfg.operate.model_dump(mode="json")},
            tags={"rayops.kind": "operate", "rayops.operate.cycle": str(number)})
        state = CycleState(number, "ingest", run_id, {"started_at": now_iso()},
                           previous.drift_streak, previous.cycles_since_retrain,
                           previous.last_retrain_at)
        self.store.save(state)
        self.say(f"[cycle {number}] started (MLflow run {run_id})")
        return state

    def _finish(self, state: CycleState) -> None:
        facts = state.facts
        outcome = facts.get("outcome", "no retrain")
        self.say(f"[cycle {state.cycle}] {outcome}")
        if state.run_id is None or facts.get("logged"):
            return
        numbers = {k: float(v) for k, v in facts.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracking.log_metrics(self.cfg.tracking, state.run_id, numbers, step=state.cycle)
        tracking.log_dict(self.cfg.tracking, state.run_id, facts, "operate/cycle.json")
        self._tag(state, {"rayops.operate.outcome": outcome[:500],
                          "rayops.operate.reasons": "; ".join(
                              facts.get("reasons", []))[:500] or "none"})
        tracking.end_run(self.cfg.tracking, state.run_id)
        facts["logged"] = True
        self.store.save(state)

    def _tag(self, state: CycleState, tags: dict[str, str]) -> None:
        if state.run_id is not None:
            client = tracking.client(self.cfg.tracking)
            for key, value in tags.items():
                client.set_tag(state.run_id, key, value)

    # ------------------------------------------------------------------ the steps

    def _ingest(self, state: CycleState) -> str:
        version = ingest_retrying(self.cfg)  # beside `ingest --watch`, a lost race is normal
        state.facts["dataset"] = version.id
        self.say(f"[cycle {state.cycle}] ingest: dataset {version.id} "
                 f"({version.manifest['rows']['train']} training rows)")
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
                detail = (f"{result.report.rows} records, drifted: "
                          f"{', '.join(result.report.drifted) or 'none'} "
                          f"(MLflow run {result.run_id})")
                state.facts["monitor_run_id"] = result.run_id
                if self.gauges is not None:
                    self.gauges.set(self.cfg.name, result.report)
        if verdict == "drift":
            state.drift_streak += 1
        elif verdict in ("ok", "warn"):
            state.drift_streak = 0
        state.facts["drift"] = verdict or "no traffic"
        state.facts["drift_streak"] = state.drift_streak
        self.say(f"[cycle {state.cycle}] monitor: {verdict or 'no traffic'} ({detail}); "
                 f"drifted windows in a row: {state.drift_streak}")
        return "decide"

    def _decide(self, state: CycleState) -> str:
        champion = tracking.alias_or_none(self.cfg.tracking, self.cfg.model_name,
                                          tracking.CHAMPION)
        live = None
        if champion is not None:
            values = live_metrics(self.cfg, self.cfg.operate.window_hours).get(
                champion.version, {})
            live = values.get(f"live_{self.metric.removeprefix('valid_')}")
        signals = Signals(state.facts.get("drift"), state.drift_streak,
                          self._new_labels(state), live, state.cycles_since_retrain)
        reasons = decide(self.cfg.operate, self.metric, self.mode, signals)
        if champion is None:
            reasons.append("no champion yet")
        state.facts.update(new_labels=signals.new_labels, reasons=reasons)
        if live is not None:
            state.facts["live_metric"] = live
        if not reasons:
            state.cycles_since_retrain += 1
            state.facts["outcome"] = "no retrain: no signal"
            self.say(f"[cycle {state.cycle}] decide: no retrain ({signals.new_labels} new "
                     f"labels, live metric {'n/a' if live is None else f'{live:.4f}'})")
            return "done"
        self.say(f"[cycle {state.cycle}] decide: retrain, because " + "; ".join(reasons))
        return "retrain"

    def _new_labels(self, state: CycleState) -> int:
        since = (dt.datetime.fromisoformat(state.last_retrain_at)
                 if state.last_retrain_at else None)
        rows = read_log(feedback_table(self.cfg), ["request_id"], since)
        return 0 if rows is None else rows.num_rows

    def _retrain(self, state: CycleState) -> str:
        facts = state.facts
        resume = "retrain_record" in facts
        if not resume:  # this cycle's own run, named before it starts: a resume finds it
            facts["retrain_started_at"] = now_iso()
            previous = tracking.alias_or_none(self.cfg.tracking, self.cfg.model_name,
                                              tracking.CHAMPION)
            facts["champion"] = previous.version if previous else None
            facts["retrain_record"] = f"{self.cfg.name}-operate-{state.cycle}-" \
                                      f"{uuid.uuid4().hex[:6]}"
            self.store.save(state)
        version = load_version(self.cfg, version_number(facts["dataset"]))
        kind = "sweep" if self.cfg.operate.sweep else "training"
        self.say(f"[cycle {state.cycle}] retrain: {kind} on {version.id}"
                 + (f" (continuing {facts['retrain_record']})" if resume else ""))
        result = train_and_register(self.cfg, version, sweep=self.cfg.operate.sweep,
                                    resume=resume, promote=False,
                                    record_name=facts["retrain_record"])
        decision = result.decision
        state.cycles_since_retrain, state.last_retrain_at = 0, facts["retrain_started_at"]
        facts.update(challenger=decision.challenger.version, train_run_id=result.run_id,
                     gate_passed=decision.passed, gate_reason=decision.reason,
                     challenger_score=decision.challenger_score)
        if decision.champion_score is not None:
            facts["champion_score"] = decision.champion_score
        self.say(f"[cycle {state.cycle}] gate: {decision.summary()}")
        if not decision.passed:
            facts["outcome"] = (f"v{decision.challenger.version} refused by the gate: "
                                f"{decision.reason}")
            return "done"
        return "gate" if facts["champion"] else "promote"  # a first model: nothing to shadow

    def _gate(self, state: CycleState) -> str:
        """The challenger against the champion on the labelled window of served traffic."""
        facts = state.facts
        if (moved := self._world_moved(state, "window gate")) is not None:
            return moved
        champion = self._predictor(facts["champion"])
        rows = labelled_window(self.cfg, champion.schema, self.cfg.operate.window_hours)
        if rows.num_rows < self.cfg.operate.window_min_labels:
            facts["window_gate"] = (f"skipped: {rows.num_rows} labelled served record(s), "
                                    f"fewer than operate.window_min_labels "
                                    f"({self.cfg.operate.window_min_labels})")
            self.say(f"[cycle {state.cycle}] window gate {facts['window_gate']}")
            return "shadow"
        passed, reason, scores = window_verdict(
            self.cfg, self._predictor(facts["challenger"]), champion, rows)
        facts.update(scores, window_gate=reason)
        self.say(f"[cycle {state.cycle}] window gate: {'passed' if passed else 'refused'}, "
                 f"{reason}")
        if not passed:
            return self._refused(state, f"refused on the labelled window: {reason}")
        return "shadow"

    def _refused(self, state: CycleState, why: str) -> str:
        """End the cycle on a challenger refused after the gate: it leaves @challenger, so
        no canary or shadow serves it again."""
        version = state.facts["challenger"]
        tracking.withdraw(self.cfg.tracking, self.cfg.model_name, version,
                          f"{why} (operate cycle {state.cycle})")
        state.facts["outcome"] = f"v{version} {why}"
        return "done"

    def _world_moved(self, state: CycleState, step: str) -> str | None:
        """Before a step acts on its challenger: "done" (the cycle ends, nothing promoted,
        and says why) when the registry no longer holds what this cycle gated: @challenger
        moved or was removed (another operator, a person, an abandoned cycle), or @champion
        is no longer the version the challenger was gated against. None when all is as the
        cycle left it. A resumed operator re-checks here instead of failing forever."""
        facts = state.facts
        challenger = self._alias(tracking.CHALLENGER)
        champion = self._alias(tracking.CHAMPION)
        if challenger != facts["challenger"]:
            why = f"@challenger is {'v' + challenger if challenger else 'unset'} since"
        elif champion != facts["champion"]:
            why = f"@champion moved to v{champion} since the gate"
        else:
            return None
        facts["outcome"] = (f"v{facts['challenger']} not promoted: {why} (before the {step}; "
                            "another operator or a person); the next cycle judges again")
        self.say(f"[cycle {state.cycle}] {facts['outcome']}")
        return "done"

    def _alias(self, alias: str) -> str | None:
        found = tracking.alias_or_none(self.cfg.tracking, self.cfg.model_name, alias)
        return found.version if found else None

    def _predictor(self, version: str) -> Predictor:
        model = tracking.RegisteredModel(self.cfg.model_name, version, "", "", "")
        return Predictor.from_registry(self.cfg.tracking, model)

    def _shadow(self, state: CycleState) -> str:
        facts, cfg = state.facts, self.cfg.operate.shadow
        if not cfg.enabled:
            return "promote"
        challenger = facts["challenger"]
        if "shadow_started_at" not in facts:
            facts["shadow_started_at"] = now_iso()
            self.store.save(state)  # a resumed step starts from it
        started = dt.datetime.fromisoformat(facts["shadow_started_at"])
        deadline = started + dt.timedelta(seconds=cfg.max_wait_s)
        self.say(f"[cycle {state.cycle}] shadow: v{challenger} beside the champion "
                 f"v{facts['champion']} until {cfg.min_records} mirrored records (at most "
                 f"until {deadline:%H:%M:%S} UTC)")
        said = time.monotonic()
        while True:
            if (moved := self._world_moved(state, "shadow")) is not None:
                return moved
            stats = shadow_stats(read_frame(prediction_table(self.cfg), LOG_COLUMNS, started),
                                 challenger, self.cfg.data.task, cfg.regression_tolerance)
            over = dt.datetime.now(dt.UTC) >= deadline
            if stats.shadow.records >= cfg.min_records or over:
                break
            if time.monotonic() - said > 30:
                self.say(f"[cycle {state.cycle}] shadow: {stats.shadow.records} of "
                         f"{cfg.min_records} mirrored records")
                said = time.monotonic()
            time.sleep(self.poll_s)
        passed, reason = shadow_verdict(cfg, stats)
        facts.update(shadow=stats.to_dict(), shadow_verdict=reason)
        self.say(f"[cycle {state.cycle}] shadow: {'passed' if passed else 'refused'}, {reason}")
        if not passed:
            return self._refused(state, f"not promoted: {reason}")
        return "promote"

    def _promote(self, state: CycleState) -> str:
        facts = state.facts
        if not self.lease.held():
            raise OperateError(f"this operator lost its lease ({self.lease.location.uri}); "
                               "nothing promoted")
        if self._alias(tracking.CHAMPION) == facts["challenger"]:
            # moved before the state was saved (this operator died in between), or by a
            # person: either way the challenger serves now, and the watch follows
            self.say(f"[cycle {state.cycle}] promote: v{facts['challenger']} is champion "
                     "already")
        else:
            if (moved := self._world_moved(state, "promotion")) is not None:
                return moved
            tracking.promote(self.cfg.tracking, self.cfg.model_name, facts["challenger"])
            self.say(f"[cycle {state.cycle}] promote: {self.cfg.model_name} "
                     f"v{facts['challenger']} is champion (was "
                     f"{'v' + facts['champion'] if facts['champion'] else 'none'})")
        facts.setdefault("promoted_at", now_iso())
        state.drift_streak = 0
        facts["outcome"] = f"v{facts['challenger']} promoted to champion"
        return "watch"

    def _watch(self, state: CycleState) -> str:
        """Watch the new champion's served records; roll back on a breach."""
        facts, cfg = state.facts, self.cfg.operate.rollback
        if cfg.watch_s == 0 or not facts.get("champion"):
            return "done"
        version = facts["challenger"]
        promoted = dt.datetime.fromisoformat(facts["promoted_at"])
        until = promoted + dt.timedelta(seconds=cfg.watch_s)
        self.say(f"[cycle {state.cycle}] watch: v{version}'s served traffic until "
                 f"{until:%H:%M:%S} UTC")
        while True:
            if (now := self._alias(tracking.CHAMPION)) != version:  # rolled back, or moved
                facts["outcome"] = (f"v{version} promoted; @champion is "
                                    f"{'v' + now if now else 'unset'} since (a rollback "
                                    "before this operator stopped, or a person): watch ended")
                self.say(f"[cycle {state.cycle}] {facts['outcome']}")
                return "done"
            stats = served_stats(read_frame(prediction_table(self.cfg), LOG_COLUMNS, promoted),
                                 version, ("champion",))
            breach = rollback_breach(cfg, stats)
            if breach is not None:
                back = tracking.rollback(self.cfg.tracking, self.cfg.model_name,
                                         why=f"rolled back by operate cycle {state.cycle}: "
                                             f"{breach}")
                facts.update(rolled_back=breach, outcome=f"v{version} promoted, then rolled "
                             f"back to v{back}: {breach}")
                self.say(f"[cycle {state.cycle}] rollback: {breach}; champion is v{back} again")
                return "done"
            if dt.datetime.now(dt.UTC) >= until:
                facts["watched"] = {"records": stats.records, "errors": stats.errors,
                                    "p95_ms": stats.p95_ms}
                self.say(f"[cycle {state.cycle}] watch: v{version} held up on "
                         f"{stats.records} served records ({stats.errors} failed)")
                return "done"
            time.sleep(self.poll_s)

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
            if facts.get("challenger") and step in ("gate", "shadow", "promote") and \
                    self._alias(tracking.CHAMPION) != facts["challenger"]:
                tracking.withdraw(self.cfg.tracking, self.cfg.model_name, facts["challenger"],
                                  f"its operate cycle {state.cycle} was {why}")
                facts["outcome"] += f"; v{facts['challenger']} withdrawn"
            state.step = "done"
            self.store.save(state)
            self._tag(state, {"rayops.operate.step": "done",
                              "rayops.operate.abandoned_at": step})
            self._finish(state)
            return state
        finally:
            self.lease.release()


def operate(cfg: PipelineConfig, cycles: int | None = None,
            say: Callable[[str], None] | None = None) -> CycleState:
    """Run the loop on the connected Ray cluster (``cycles`` None: until stopped)."""
    return Operator(cfg, say).run(cycles)
