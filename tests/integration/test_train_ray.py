"""Ray Train on the shared local cluster: 2 CPU workers running DDP on the smoke preset.

One 2-epoch run is shared by the tests (each `fit` costs Ray ~10-20 s of worker start-up on 2 cores); the
resume test then continues that same run to 4 epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hrm_platform.checkpoint import MODEL_FILE, file_sha256, load_checkpoint, load_manifest
from hrm_platform.config import PlatformConfig, load_config
from hrm_platform.training.trainer import TrainingError, TrainingSummary, run_training

pytestmark = pytest.mark.ray

SMOKE_PRESET = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"
RUN_NAME = "ddp"


@dataclass
class FinishedRun:
    config: PlatformConfig
    storage: Path
    summary: TrainingSummary


def _train(storage: Path, epochs: int) -> TrainingSummary:
    config = load_config(
        SMOKE_PRESET, [f"train.storage_path={storage}", f"train.name={RUN_NAME}", f"train.epochs={epochs}"]
    )
    config.train.keep_checkpoints = 1
    return run_training(config, quiet=True)


@pytest.fixture(scope="module")
def two_epoch_run(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    storage = tmp_path_factory.mktemp("ray-train")
    return FinishedRun(load_config(SMOKE_PRESET), storage, _train(storage, epochs=2))


def test_ddp_run_learns_keeps_ranks_identical_and_writes_verified_checkpoints(two_epoch_run: FinishedRun) -> None:
    summary, run_dir = two_epoch_run.summary, two_epoch_run.storage / RUN_NAME
    history = summary.history
    assert [entry["epoch"] for entry in history] == [1, 2] and summary.epochs_completed == 2
    assert all(entry["world_size"] == 2 and entry["samples_per_s"] > 0 for entry in history)
    # Learning: the loss per trained sample falls, and so does the first segment's (every sample trains there).
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["train_loss_per_segment"][0] < history[0]["train_loss_per_segment"][0]
    # DDP: after each epoch's optimizer steps both ranks hold bit-identical weights, and the weights moved.
    fingerprints = [entry["param_fingerprints"] for entry in history]
    assert all(len(ranks) == 2 and ranks[0] == ranks[1] for ranks in fingerprints)
    assert fingerprints[0][0] != fingerprints[1][0]
    for entry in history:
        assert 0.0 <= entry["val_accuracy"] <= 1.0
        assert 1.0 <= entry["train_mean_segments"] <= two_epoch_run.config.model.max_segments

    best = Path(summary.checkpoint_path)
    assert best.parent == run_dir and best.name == f"epoch_{summary.metrics['epoch']:04d}"
    assert summary.metrics["val_accuracy"] == max(entry["val_accuracy"] for entry in history)
    kept = sorted(path.name for path in run_dir.glob("epoch_*"))
    assert "epoch_0002" in kept and len(kept) <= 2  # the best k=1, plus the latest
    for name in kept:
        manifest = load_manifest(run_dir / name)  # raises on any hash mismatch
        assert manifest["files"][MODEL_FILE] == file_sha256(run_dir / name / MODEL_FILE)
        assert manifest["model_version"] == manifest["files"][MODEL_FILE][:12]
    loaded = load_checkpoint(best, with_training_state=True)
    assert not any(key.startswith("module.") for key in loaded.model_state)  # saved unwrapped from DDP
    assert loaded.training_state["epoch"] == summary.metrics["epoch"]
    rng_by_rank = loaded.training_state["rng_by_rank"]
    assert len(rng_by_rank) == 2 and not torch.equal(rng_by_rank[0]["torch"], rng_by_rank[1]["torch"])


def test_same_name_and_storage_resumes_at_epoch_3(two_epoch_run: FinishedRun) -> None:
    first = two_epoch_run.summary

    second = _train(two_epoch_run.storage, epochs=4)

    epochs = [entry["epoch"] for entry in second.history]
    assert epochs == [1, 2, 3, 4] and second.epochs_completed == 4
    assert [entry["resumed_after_epoch"] for entry in second.history] == [0, 0, 2, 2]
    # Epochs 1-2 are the first run's, carried over in the checkpoint, not trained again.
    assert second.history[:2] == first.history
    steps_per_epoch = first.history[0]["step"]
    assert [entry["step"] for entry in second.history] == [steps_per_epoch * epoch for epoch in epochs]
    assert load_manifest(Path(second.latest_checkpoint_path))["epoch"] == 4
    assert math.isfinite(second.metrics["val_accuracy"])


def test_non_finite_loss_stops_the_run_at_once_without_a_checkpoint(ray_cluster, tmp_path: Path) -> None:
    # lr 1e30: the first optimizer step overflows the weights, so segment 2 of step 1 has a NaN loss.
    config = load_config(
        SMOKE_PRESET,
        [f"train.storage_path={tmp_path}", "train.name=diverge", "train.lr=1e30", "train.warmup_steps=0"],
    )
    with pytest.raises(TrainingError, match=r"non-finite training loss at epoch 1, step 1 .*no checkpoint was written"):
        run_training(config, quiet=True)
    assert list((tmp_path / "diverge").glob("epoch_*")) == []
