"""Which checkpoint a resumed run continues from: the newest one rank 0 wrote, even when
the driver died before Ray Train registered it, and never one whose upload was cut short."""

import json

import torch
from ray.train import Checkpoint

from rayops.models.checkpoints import CHECKPOINT_FILE, PROGRESS_FILE, history_of, latest_state
from rayops.storage import resolve


def _write(folder, epoch: int, complete: bool = True):
    folder.mkdir(parents=True)
    state = {"epoch": epoch, "history": json.dumps([{"epoch": e} for e in range(1, epoch + 1)])}
    torch.save(state, folder / CHECKPOINT_FILE)
    if not complete:  # the upload stopped half-way through the weights
        data = (folder / CHECKPOINT_FILE).read_bytes()
        (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    (folder / PROGRESS_FILE).write_text(json.dumps({"epoch": epoch}))
    return folder


def test_a_newer_unregistered_checkpoint_wins_and_a_broken_one_is_skipped(tmp_path):
    run = tmp_path / "run"
    registered = _write(run / "checkpoint_2026-01-01_00-00-03", 3)
    _write(run / "checkpoint_2026-01-01_00-00-04", 4)  # written; its registration was lost
    _write(run / "checkpoint_2026-01-01_00-00-05", 5, complete=False)
    (run / "checkpoint_2026-01-01_00-00-06").mkdir()  # no progress file yet: not a checkpoint
    state = latest_state(resolve(str(run)), Checkpoint.from_directory(str(registered)))
    assert state["epoch"] == 4
    assert [h["epoch"] for h in history_of(state)] == [1, 2, 3, 4]


def test_the_registered_checkpoint_when_storage_has_nothing_newer(tmp_path):
    run = tmp_path / "run"
    registered = _write(run / "checkpoint_b", 2)
    _write(run / "checkpoint_a", 1)
    assert latest_state(resolve(str(run)), Checkpoint.from_directory(str(registered)))["epoch"] == 2
    assert latest_state(resolve(str(tmp_path / "empty")), None) is None
    assert history_of(None) == []


def test_a_snapshot_cut_short_by_a_killed_driver_is_set_aside(tmp_path):
    """Ray Train refuses to start from an empty or truncated snapshot
    (CheckpointManagerInitializationError); the run resumes from stored checkpoints."""
    from rayops.models.checkpoints import SNAPSHOT_FILE, set_aside_broken_snapshot

    run = tmp_path / "run"
    _write(run / "checkpoint_a", 1)
    (run / SNAPSHOT_FILE).write_text("")
    assert set_aside_broken_snapshot(resolve(str(run)))
    assert not (run / SNAPSHOT_FILE).exists()
    assert [p.name.startswith(f"{SNAPSHOT_FILE}.broken-") for p in run.iterdir()].count(True) == 1
    (run / SNAPSHOT_FILE).write_text('{"checkpoint_results": []}')
    assert not set_aside_broken_snapshot(resolve(str(run)))  # a whole one stays
    assert (run / SNAPSHOT_FILE).exists()
    assert not set_aside_broken_snapshot(resolve(str(tmp_path / "new-run")))  # none yet
