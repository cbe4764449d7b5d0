"""What the operate loop keeps between steps and between runs: the cycle's state (so a
crashed operator resumes where it stopped) and the lease (so only one operator runs a
pipeline), both small JSON objects under ``{storage.root}/operate/{pipeline}/``."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
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
STEPS = ("ingest", "monitor", "decide", "retrain", "gate", "shadow", "promote", "watch", "done")


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
    (a thread renews it every third of that); promotion checks it is still held.

    The claim is a numbered series of small JSON records (``lease/00000000000000000007.json``)
    and the newest one says who holds it. Every take, renewal and release writes the next
    number with a put-if-absent (:meth:`Location.put_if_absent`: the primitive Delta
    commits use), so of two operators that read the same record and both write the next,
    exactly one succeeds, on a local folder and on S3 alike; a record is never seen half
    written."""

    KEEP = 3  # records kept behind the newest (older ones are removed)

    def __init__(self, folder: Location, lease_s: float) -> None:
        self.location = folder.join("lease")
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.number: int | None = None  # the record this operator wrote last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _newest(self) -> tuple[int, dict[str, Any]]:
        """The newest record's number and content; (0, {}) before the first."""
        numbers = [
            int(n[:-5])
            for n in self.location.list_dir()
            if n.endswith(".json") and n[:-5].isdigit()
        ]
        if not numbers:
            return 0, {}
        newest = max(numbers)
        try:
            return newest, self._record(newest).read_json()
        except ValueError as exc:  # written whole or not at all: this is not ours
            raise OperateError(
                f"the lease record {self._record(newest).uri} is not JSON "
                f"({exc}); remove it if no operator runs"
            ) from None

    def _record(self, number: int) -> Location:
        return self.location.join(f"{number:020d}.json")

    def _claim(self, after: int, expires: float) -> bool:
        """Write record ``after + 1``; False when another operator wrote it first."""
        record = {"owner": self.owner, "renewed": now_iso(), "expires": expires}
        if not self._record(after + 1).put_if_absent(json.dumps(record).encode()):
            return False
        self.number = after + 1
        if after - self.KEEP >= 1:  # each claim removes one old record: KEEP stay behind
            with contextlib.suppress(StorageError):
                self._record(after - self.KEEP).delete()
        return True

    def _live_holder(self, record: dict[str, Any]) -> bool:
        return (
            bool(record)
            and record.get("owner") != self.owner
            and record.get("expires", 0) > time.time()
        )

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lease, waiting up to ``wait_s`` for another operator's to expire."""
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            number, held = self._newest()
            if not self._live_holder(held):
                if self._claim(number, time.time() + self.lease_s):
                    break
                continue  # another operator wrote the next record first: read it
            left = held["expires"] - time.time()
            if time.monotonic() + left > deadline:
                raise OperateError(
                    f"another operator ({held['owner']}) runs this pipeline: its lease at "
                    f"{self.location.uri} lasts {left:.0f} s more; stop it, or, if it "
                    "crashed, start again once the lease has expired"
                )
            if not said:
                logger.info(
                    "Waiting %.0f s for the lease of %s (a stopped operator's) to expire",
                    left,
                    held["owner"],
                )
                said = True
            time.sleep(min(max(left, 0.1), 1.0))
        self._thread = threading.Thread(target=self._renew, name="rayops-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                number, _ = self._newest()
                if number != self.number or not self._claim(number, time.time() + self.lease_s):
                    logger.warning("This operator lost its lease at %s", self.location.uri)
                    return
            except Exception as exc:  # confirmed before promoting: a lost lease stops it
                logger.warning("Could not renew the operate lease: %s", exc)

    def held(self) -> bool:
        """Whether the newest record is this operator's own, unexpired."""
        number, record = self._newest()
        return (
            number == self.number
            and record.get("owner") == self.owner
            and record.get("expires", 0) > time.time()
        )

    def release(self) -> None:
        """Give the lease up at once (a record that expired when written)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.number is not None and self.held():
            self._claim(self.number, 0.0)
