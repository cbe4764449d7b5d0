"""A run of one worker trained in the calling process (a sweep's trial): its checkpoints
land in storage as Ray Train's would, the best and the newest are kept, a failed loop
continues from its newest checkpoint, and a run started again finds what storage holds."""

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from ray.train import Checkpoint

from rayops import families
from rayops.config import load_config
from rayops.demo import config_path
from rayops.errors import TrainingError
from rayops.models import session
from rayops.models.checkpoints import CHECKPOINT_FILE, PROGRESS_FILE, checkpoints_of
from rayops.models.mlp import MLPFamily
from rayops.train.in_process import fit_in_process

F1 = {1: 0.50, 2: 0.70, 3: 0.60, 4: 0.65}  # epoch 2 is the best


class Flaky(MLPFamily):
    """The MLP's checkpoints and history, written by a loop that fails once after
    ``fail_after`` epochs (a worker that died)."""

    name = "flaky-unit"
    fail_after: ClassVar[int | None] = None
    attempts: ClassVar[list[int]] = []

    def trainer(self) -> tuple[Any, Any]:
        return None, flaky_loop


def flaky_loop(config: dict[str, Any]) -> None:
    assert session.world() == (0, 1) and not session.local().use_gpu
    newest = session.latest_checkpoint()
    done = 0
    if newest is not None:
        with newest.as_directory() as folder:
            done = json.loads((Path(folder) / PROGRESS_FILE).read_text())["epoch"]
    Flaky.attempts.append(done)
    for epoch in range(done + 1, 5):
        metrics = {"epoch": epoch, "valid_f1": F1[epoch]}
        folder = config["tmp"] / f"written-{epoch}-{len(Flaky.attempts)}"
        folder.mkdir()
        history = [{"epoch": e, "valid_f1": F1[e]} for e in range(1, epoch + 1)]
        torch.save({"epoch": epoch, "history": json.dumps(history)}, folder / CHECKPOINT_FILE)
        (folder / PROGRESS_FILE).write_text(json.dumps({"epoch": epoch}))
        session.report(metrics, Checkpoint.from_directory(str(folder)))
        if epoch == Flaky.fail_after and len(Flaky.attempts) == 1:
            raise RuntimeError("worker died")


def _cfg(tmp_path, max_failures: int):
    return load_config(
        config_path(),
        [
            f"storage.root={tmp_path}/lake",
            "model.family=flaky-unit",
            "train.num_workers=1",
            "train.checkpoints_to_keep=1",
            f"train.max_failures={max_failures}",
        ],
    )


def _stored_epochs(cfg) -> list[int]:
    run = Path(checkpoints_of(cfg, "run-1").path)
    return sorted(json.loads((p / PROGRESS_FILE).read_text())["epoch"] for p in run.iterdir())


@pytest.fixture(autouse=True)
def _flaky(monkeypatch):
    """Known for this test only: other tests list the families there are."""
    monkeypatch.setitem(families._FAMILIES, Flaky.name, Flaky())
    Flaky.attempts.clear()
    Flaky.fail_after = None


def test_a_failed_loop_continues_from_its_newest_checkpoint_and_keeps_the_best(tmp_path):
    cfg = _cfg(tmp_path, max_failures=1)
    Flaky.fail_after = 3
    reported: list[dict[str, Any]] = []
    result = fit_in_process(cfg, {"tmp": tmp_path}, "run-1", reported.append)
    assert Flaky.attempts == [0, 3]  # the second attempt began after epoch 3
    assert [r["epoch"] for r in reported] == [1, 2, 3, 4]  # no epoch trained twice
    assert _stored_epochs(cfg) == [2, 4]  # the best (by valid_f1) and the newest
    ((best, metrics),) = [(c, m) for c, m in result.best_checkpoints if m["epoch"] == 2]
    assert metrics["valid_f1"] == 0.70 and Path(best.path).parent.name == "run-1"
    assert result.checkpoint is not None and result.checkpoint.path.endswith(
        max(p.name for p in Path(best.path).parent.iterdir())
    )
    # Started again (a driver that died after training): nothing retrains, and the best
    # checkpoint's metrics come back from the stored history.
    Flaky.attempts.clear()
    again = fit_in_process(cfg, {"tmp": tmp_path}, "run-1", reported.append)
    assert Flaky.attempts == [4] and len(reported) == 4
    assert max(m["valid_f1"] for _, m in again.best_checkpoints) == 0.70


def test_failures_beyond_max_failures_fail_the_run_and_keep_its_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, max_failures=0)
    Flaky.fail_after = 2
    with pytest.raises(TrainingError, match=r"after 1 attempt\(s\): worker died"):
        fit_in_process(cfg, {"tmp": tmp_path}, "run-1", lambda _: None)
    assert _stored_epochs(cfg) == [2]  # epoch 1 was worse, epoch 2 the newest and best


def test_only_one_worker_trains_in_process(tmp_path):
    cfg = _cfg(tmp_path, max_failures=0).with_overrides({"train.num_workers": 2})
    with pytest.raises(TrainingError, match="train.num_workers is 2"):
        fit_in_process(cfg, {"tmp": tmp_path}, "run-1", lambda _: None)
