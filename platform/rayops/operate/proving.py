"""The steps that prove a challenger before and after it serves: the shadow beside the
champion, the promotion, and the watch that rolls it back on a breach; and the checks
each makes that the registry still holds what the cycle gated."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.monitor.feedback import prediction_table, read_frame
from rayops.operate.signals import rollback_breach, served_stats, shadow_stats, shadow_verdict
from rayops.operate.state import CycleState, Lease, OperateError, StateStore, now_iso
from rayops.predict import Predictor

# The prediction log's columns the shadow and the watch read.
LOG_COLUMNS = [
    "request_id",
    "record_index",
    "model_version",
    "role",
    "prediction",
    "error",
    "latency_ms",
]


class Proving:
    """Steps of :class:`rayops.operate.Operator` (which sets these attributes)."""

    cfg: PipelineConfig
    say: Callable[[str], None]
    store: StateStore
    lease: Lease
    poll_s: float

    def _refused(self, state: CycleState, why: str) -> str:
        """End the cycle on a challenger refused after the gate: it leaves @challenger, so
        no canary or shadow serves it again."""
        version = state.facts["challenger"]
        tracking.withdraw(
            self.cfg.tracking, self.cfg.model_name, version, f"{why} (operate cycle {state.cycle})"
        )
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
        facts["outcome"] = (
            f"v{facts['challenger']} not promoted: {why} (before the {step}; "
            "another operator or a person); the next cycle judges again"
        )
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
        self.say(
            f"[cycle {state.cycle}] shadow: v{challenger} beside the champion "
            f"v{facts['champion']} until {cfg.min_records} mirrored records (at most "
            f"until {deadline:%H:%M:%S} UTC)"
        )
        said = time.monotonic()
        while True:
            if (moved := self._world_moved(state, "shadow")) is not None:
                return moved
            stats = shadow_stats(
                read_frame(prediction_table(self.cfg), LOG_COLUMNS, started),
                challenger,
                self.cfg.data.task,
                cfg.regression_tolerance,
            )
            over = dt.datetime.now(dt.UTC) >= deadline
            if stats.shadow.records >= cfg.min_records or over:
                break
            if time.monotonic() - said > 30:
                self.say(
                    f"[cycle {state.cycle}] shadow: {stats.shadow.records} of "
                    f"{cfg.min_records} mirrored records"
                )
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
            raise OperateError(
                f"this operator lost its lease ({self.lease.location.uri}); nothing promoted"
            )
        if self._alias(tracking.CHAMPION) == facts["challenger"]:
            # moved before the state was saved (this operator died in between), or by a
            # person: either way the challenger serves now, and the watch follows
            self.say(f"[cycle {state.cycle}] promote: v{facts['challenger']} is champion already")
        else:
            if (moved := self._world_moved(state, "promotion")) is not None:
                return moved
            tracking.promote(self.cfg.tracking, self.cfg.model_name, facts["challenger"])
            self.say(
                f"[cycle {state.cycle}] promote: {self.cfg.model_name} "
                f"v{facts['challenger']} is champion (was "
                f"{'v' + facts['champion'] if facts['champion'] else 'none'})"
            )
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
        self.say(
            f"[cycle {state.cycle}] watch: v{version}'s served traffic until {until:%H:%M:%S} UTC"
        )
        while True:
            if (now := self._alias(tracking.CHAMPION)) != version:  # rolled back, or moved
                facts["outcome"] = (
                    f"v{version} promoted; @champion is "
                    f"{'v' + now if now else 'unset'} since (a rollback "
                    "before this operator stopped, or a person): watch ended"
                )
                self.say(f"[cycle {state.cycle}] {facts['outcome']}")
                return "done"
            stats = served_stats(
                read_frame(prediction_table(self.cfg), LOG_COLUMNS, promoted),
                version,
                ("champion",),
            )
            breach = rollback_breach(cfg, stats)
            if breach is not None:
                back = tracking.rollback(
                    self.cfg.tracking,
                    self.cfg.model_name,
                    why=f"rolled back by operate cycle {state.cycle}: {breach}",
                )
                facts.update(
                    rolled_back=breach,
                    outcome=f"v{version} promoted, then rolled back to v{back}: {breach}",
                )
                self.say(f"[cycle {state.cycle}] rollback: {breach}; champion is v{back} again")
                return "done"
            if dt.datetime.now(dt.UTC) >= until:
                facts["watched"] = {
                    "records": stats.records,
                    "errors": stats.errors,
                    "p95_ms": stats.p95_ms,
                }
                self.say(
                    f"[cycle {state.cycle}] watch: v{version} held up on "
                    f"{stats.records} served records ({stats.errors} failed)"
                )
                return "done"
            time.sleep(self.poll_s)
