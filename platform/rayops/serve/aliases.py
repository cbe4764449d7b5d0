"""Following the registry: the version the served alias points to, and the shadow alias's
beside it.

A replica loads the aliased version at start and polls the alias: when it moves
(``rayops promote``, ``rayops rollback``, the gate, the MLflow UI) the new version is loaded
beside the old one and swapped in with one assignment, so no request fails during an
update. A version that cannot be served here (other inputs, files gone, not a rayops
bundle) is refused once; a registry or store that does not answer is retried at the next
poll while the replica keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

from rayops import tracking
from rayops.errors import ModelFilesMissing, TrainingError, redact
from rayops.predict import Predictor
from rayops.serve.bodies import AliasState, ModelInfo
from rayops.serve.settings import ReplicaSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    info: ModelInfo


class AliasFollower:
    """The served model, the one before it (the fallback) and the shadow, as the registry's
    aliases say; and what the registry last said."""

    previous: LoadedModel | None = None  # the model served before the last swap
    shadow: LoadedModel | None = None  # shadow_alias's model, when it is another version

    def __init__(self, settings: ReplicaSettings, stats: Counter[str]) -> None:
        self.settings, self.serve, self.stats = settings, settings.serve, stats
        self.registry_ok_at: float | None = None  # monotonic time of the last answer
        self.registry_error: str | None = None
        self.alias_target: str | None = None
        self.refused: dict[str, str] = {}  # version -> why this replica cannot serve it
        self.ungated: set[str] = set()  # shadow-alias versions the gate did not pass

    async def start(self) -> None:
        """Load what the aliases point to now."""
        registered = await asyncio.to_thread(self.resolve)
        self.model = await asyncio.to_thread(self.load, registered)
        if self.watches_shadow:
            await asyncio.to_thread(self.refresh_shadow)

    @property
    def watches_shadow(self) -> bool:
        return self.serve.mirror_fraction > 0 or self.serve.canary_fraction > 0

    def resolve(self) -> tracking.RegisteredModel:
        """Where the alias points now; remembers when the registry last answered."""
        try:
            registered = tracking.resolve_alias(
                self.settings.tracking, self.settings.model_name, self.serve.model_alias
            )
        except Exception as exc:
            self.registry_error = str(exc)
            raise
        self.registry_ok_at, self.registry_error = time.monotonic(), None
        self.alias_target = registered.version
        return registered

    def load(self, registered: tracking.RegisteredModel, alias: str | None = None) -> LoadedModel:
        self.stats["model_downloads"] += 1
        predictor = Predictor.from_registry(self.settings.tracking, registered)
        info = ModelInfo(
            name=registered.name,
            version=registered.version,
            alias=alias or self.serve.model_alias,
            run_id=registered.run_id,
        )
        return LoadedModel(predictor, info)

    async def watch(self) -> None:
        """Poll the aliases every ``serve.model_poll_interval_s`` (one line when an outage
        starts and one when it ends, not one per poll)."""
        name, alias = self.settings.model_name, self.serve.model_alias
        while True:
            await asyncio.sleep(self.serve.model_poll_interval_s)
            failing = self.registry_error is not None
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                if not failing:
                    logger.warning(
                        "Checking %s@%s failed; still serving v%s until it answers: %s",
                        name,
                        alias,
                        self.model.info.version,
                        exc,
                    )
            else:
                if failing:
                    logger.info("The registry answers again (%s@%s)", name, alias)

    def refresh(self) -> bool:
        """Swap in the version the alias points to now, if it moved. True if swapped. The
        shadow alias is followed the same way, after the served one."""
        swapped = self._refresh_served()
        if self.watches_shadow:
            self.refresh_shadow()
        return swapped

    def _refresh_served(self) -> bool:
        registered = self.resolve()
        version = registered.version
        if version == self.model.info.version or version in self.refused:
            return False
        try:
            candidate = self._candidate(registered, self.serve.model_alias)
        except Exception as exc:  # the store did not answer: tried again at the next poll
            self.registry_error = f"cannot download v{version}: {exc}"
            raise
        if candidate is None:
            return False
        # One assignment: in-flight batches keep the old model, which stays loaded as the
        # fallback while the new one proves itself.
        self.previous, self.model = self.model, candidate
        logger.info("Now serving %s v%s (@%s)", registered.name, version, self.serve.model_alias)
        return True

    def refresh_shadow(self) -> None:
        """Follow ``shadow_alias``: load its version beside the served one (None when the
        alias is unset, names the served version or a version the gate did not pass).
        Never fails the served model."""
        alias = self.serve.shadow_alias
        try:
            registered = tracking.alias_or_none(
                self.settings.tracking, self.settings.model_name, alias
            )
        except Exception as exc:  # the registry's outage is reported by the served alias
            logger.debug("Cannot read %s@%s: %s", self.settings.model_name, alias, exc)
            return
        if registered is None or registered.version == self.model.info.version:
            self.shadow = None
            return
        if not registered.gated:  # refused, withdrawn, or set by hand to an ungated version
            self._ungated(registered, alias)
            return
        version = registered.version
        if (
            self.shadow is not None and self.shadow.info.version == version
        ) or version in self.refused:
            return
        try:
            candidate = self._candidate(registered, alias)
        except Exception as exc:
            logger.warning(
                "Cannot load the shadow %s v%s (@%s), tried again at the next poll: %s",
                registered.name,
                version,
                alias,
                exc,
            )
            return
        if candidate is not None:
            self.shadow = candidate
            logger.info(
                "Shadow %s v%s (@%s) beside v%s: mirror %.0f%%, canary %.0f%%",
                registered.name,
                version,
                alias,
                self.model.info.version,
                100 * self.serve.mirror_fraction,
                100 * self.serve.canary_fraction,
            )

    def _ungated(self, registered: tracking.RegisteredModel, alias: str) -> None:
        if registered.version not in self.ungated:
            self.ungated.add(registered.version)
            logger.error(
                "No shadow or canary traffic for %s v%s (@%s points to it): the "
                "gate did not pass it, or it was withdrawn since",
                registered.name,
                registered.version,
                alias,
            )
        self.shadow = None

    def _candidate(self, registered: tracking.RegisteredModel, alias: str) -> LoadedModel | None:
        """``registered`` loaded to serve as ``alias`` (the shadow's model when the shadow
        is promoted: no download), or None when this replica refuses it, once: its files
        gone, not a rayops bundle, or other inputs than the served model's. A store that
        does not answer raises: tried again at the next poll."""
        version, shadow = registered.version, self.shadow
        if shadow is not None and shadow.info.version == version:
            candidate = LoadedModel(
                shadow.predictor, shadow.info.model_copy(update={"alias": alias})
            )
        else:
            try:
                candidate = self.load(registered, alias)
            except (ModelFilesMissing, TrainingError) as exc:
                self._refuse(version, str(exc))
                return None
        if candidate.predictor.schema != self.model.predictor.schema:
            self._refuse(
                version,
                f"expects other inputs than v{self.model.info.version}; redeploy to serve it",
            )
            return None
        return candidate

    def _refuse(self, version: str, reason: str) -> None:
        self.refused[version] = reason
        logger.error(
            "Not serving %s v%s (@%s points to it): %s; still serving v%s",
            self.settings.model_name,
            version,
            self.serve.model_alias,
            reason,
            self.model.info.version,
        )

    def alias_state(self) -> AliasState:
        checked = self.registry_ok_at
        ago = None if checked is None else round(time.monotonic() - checked, 1)
        stale = ago is None or ago > self.serve.registry_stale_after_s
        return AliasState(
            alias=self.serve.model_alias,
            target_version=self.alias_target,
            served_version=self.model.info.version,
            not_served=self.refused,
            registry_reachable=not stale,
            registry_checked_s_ago=ago,
            registry_error=self.registry_error and redact(self.registry_error),
        )
