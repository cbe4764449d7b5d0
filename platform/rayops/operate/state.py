"""What the operate loop keeps between steps and between runs: the cycle's state (so a
crashed operator resumes where it stopped) and the lease (so only one operator runs a
pipeline), both small JSON objects under ``{storage.root}/operate/{pipeline}/``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rayops.errors import RayopsError, StorageError
from rayops.storage import Location

logger = logging.getLogger(__name__)

# The steps of a cycle, in order; "done" ends it.
STEPS = ("ingest", "monitor", "decide", "retrain", "gate", "shadow", "promote", "watch",
         "done")


class OperateError(RayopsError):
    """The operate loop cannot go on (another operator runs, a step failed)."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass
class CycleState:
    """The current cycle (its number, the next step to run, what its steps found) and what
    carries from cycle to cycle."""

    cycle: int = 0
    step: str = "done"
    run_id: str | None = None  # the cycle's MLflow run
    facts: dict[str, Any] = field(default_factory=dict)
    drift_streak: int = 0
    cycles_since_retrain: int = 0
    last_retrain_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.step == "done"


class StateStore:
    def __init__(self, folder: Location) -> None:
        self.location = folder.join("state.json")

    def load(self) -> CycleState:
        """The saved state; a fresh one before the first cycle."""
        if not self.location.exists():
            return CycleState()
        raw = self.location.read_json()
        known = {f.name for f in dataclasses.fields(CycleState)}
        return CycleState(**{k: v for k, v in raw.items() if k in known})

    def save(self, state: CycleState) -> None:
        """Written whole: a local file through a rename, an object in one PUT."""
        value = dataclasses.asdict(state)
        if not self.location.is_local:
            self.location.write_json(value)
            return
        staged = self.location.parent().join(f".state-{os.getpid()}.json")
        staged.write_json(value)
        with self.location.io("replace"):
            self.location.fs.move(staged.path, self.location.path)


class Lease:
    """One operator per pipeline: a claim that expires ``lease_s`` after its last renewal
    (a thread renews it every third of that). Taking it checks that no other live operator
    holds it, writes it, and reads it back; promotion checks it is still held."""

    def __init__(self, folder: Location, lease_s: float) -> None:
        self.location = folder.join("lease.json")
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return self.location.read_json() if self.location.exists() else None
        except (StorageError, ValueError):
            return None

    def _holder(self) -> dict[str, Any] | None:
        """Another operator's live claim, if any."""
        held = self._read()
        if held and held.get("owner") != self.owner and held.get("expires", 0) > time.time():
            return held
        return None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lease, waiting up to ``wait_s`` for another operator's to expire."""
        deadline = time.monotonic() + wait_s
        said = False
        while (held := self._holder()) is not None:
            left = held["expires"] - time.time()
            if time.monotonic() + left > deadline:
                raise OperateError(
                    f"another operator ({held['owner']}) runs this pipeline: its lease at "
                    f"{self.location.uri} lasts {left:.0f} s more; stop it, or, if it "
                    "crashed, start again once the lease has expired")
            if not said:
                logger.info("Waiting %.0f s for the lease of %s (a stopped operator's) to "
                            "expire", left, held["owner"])
                said = True
            time.sleep(min(max(left, 0.1), 1.0))
        self._write()
        if not self.held():
            raise OperateError(f"another operator took the lease at {self.location.uri} at "
                               "the same moment; only one may run")
        self._thread = threading.Thread(target=self._renew, name="rayops-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.location.write_json({"owner": self.owner, "renewed": now_iso(),
                                  "expires": time.time() + self.lease_s})

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if self.held():
                    self._write()
            except Exception as exc:  # confirmed before promoting: a lost lease stops it
                logger.warning("Could not renew the operate lease: %s", exc)

    def held(self) -> bool:
        held = self._read()
        return bool(held and held.get("owner") == self.owner
                    and held.get("expires", 0) > time.time())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held():
            with self.location.io("delete"):
                self.location.fs.delete_file(self.location.path)
