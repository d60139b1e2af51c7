"""A non-finite loss stops training with an error naming the epoch and step; no bad checkpoint is left.

Three runs: `train_local` with lr=1e30 (the weights blow up on the first step), `train_local` with a NaN
injected into a weight at the start of epoch 2 (so a good epoch-1 checkpoint exists and must survive
intact), and the epoch-2 injection again through Ray Train on the session's local cluster.

"No corrupted checkpoint" means: every checkpoint directory present verifies (hashes, format) and holds
finite weights, and no half-written staging directory is left beside them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from hrm_platform.checkpoint import MANIFEST_FILE, load_checkpoint
from hrm_platform.config import PlatformConfig

EXPLOSIVE_LR = 1e30
SHORT_EPOCH_BATCHES = 4  # the fault needs a finished epoch 1, not a long one
NAN_INJECTION_DIR = Path(__file__).parent / "nan_injection"  # sitecustomize.py for Ray Train workers


def _error_location(message: str) -> tuple[int, int]:
    found = re.search(r"epoch (\d+), step (\d+)", message)
    assert found, f"the error does not name the epoch and step: {message}"
    return int(found.group(1)), int(found.group(2))


def _checkpoint_dirs(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob(MANIFEST_FILE))


def _assert_no_corrupted_checkpoint(root: Path) -> list[Path]:
    """Every checkpoint under `root` verifies and has finite weights; nothing half-written is left."""
    checkpoints = _checkpoint_dirs(root)
    for checkpoint in checkpoints:
        loaded = load_checkpoint(checkpoint)  # raises on a hash / format problem
        bad = [name for name, tensor in loaded.model_state.items()
               if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        assert bad == [], f"{checkpoint} holds non-finite weights: {bad[:5]}"
    leftovers = [path for path in root.rglob("*") if path.is_dir() and ".partial-" in path.name]
    assert leftovers == [], f"half-written checkpoint directories left behind: {leftovers}"
    return checkpoints


def _explosive(config: PlatformConfig) -> PlatformConfig:
    config.train.lr = EXPLOSIVE_LR
    return config


def test_train_local_with_exploding_lr_stops_naming_epoch_and_step(smoke_config, tmp_path: Path) -> None:
    from hrm_platform.training.epoch import NonFiniteLossError
    from hrm_platform.training.local import train_local

    with pytest.raises(NonFiniteLossError) as stopped:
        train_local(_explosive(smoke_config), tmp_path / "run")

    epoch, step = _error_location(str(stopped.value))
    print(f"stopped: {stopped.value}")
    assert (epoch, step) == (1, 1), "lr=1e30 makes the first step's later segments non-finite"
    assert _assert_no_corrupted_checkpoint(tmp_path / "run") == []


def test_train_local_nan_in_epoch_2_keeps_the_epoch_1_checkpoint_intact(
    smoke_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weight becomes NaN at the first step of epoch 2; the real forward then produces a NaN loss."""
    from hrm_platform.training import epoch as epoch_module
    from hrm_platform.training.local import train_local

    real_step = epoch_module.deep_supervision_step
    progress_lines: list[str] = []  # train_local reports one line per finished epoch
    steps_taken = {"count": 0, "poisoned_at": None}

    def poisoning_step(model, *args, **kwargs):
        if progress_lines and steps_taken["poisoned_at"] is None:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = math.nan
            steps_taken["poisoned_at"] = steps_taken["count"] + 1
        steps_taken["count"] += 1
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(epoch_module, "deep_supervision_step", poisoning_step)
    smoke_config.train.epochs = 3
    smoke_config.train.max_train_batches = SHORT_EPOCH_BATCHES
    with pytest.raises(epoch_module.NonFiniteLossError) as stopped:
        train_local(smoke_config, tmp_path / "run", progress=progress_lines.append)

    epoch, step = _error_location(str(stopped.value))
    print(f"poisoned a weight at step {steps_taken['poisoned_at']} (epoch 2); stopped: {stopped.value}")
    assert len(progress_lines) == 1
    assert (epoch, step) == (2, steps_taken["poisoned_at"])
    checkpoints = _assert_no_corrupted_checkpoint(tmp_path / "run")
    assert [path.name for path in checkpoints] == ["epoch_0001"]
    assert load_checkpoint(checkpoints[0]).manifest["epoch"] == 1


@pytest.mark.ray
def test_ray_train_nan_in_epoch_2_fails_the_run_naming_epoch_and_step(
    ray_cluster, smoke_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Ray Train (2 DDP workers) and the real `run_training`: the workers start with
    nan_injection/ on PYTHONPATH, whose sitecustomize.py poisons a weight when epoch 2 starts. The run must
    fail (not return a summary of epoch 1 as if it had finished), name the epoch and step, and leave the
    epoch-1 checkpoint intact."""
    from hrm_platform.training import trainer as trainer_module

    real_build_trainer = trainer_module.build_trainer

    def build_trainer_with_injection(*args, **kwargs):
        built = real_build_trainer(*args, **kwargs)
        built.run_config.worker_runtime_env = {
            "env_vars": {"PYTHONPATH": str(NAN_INJECTION_DIR), "HRM_TEST_NAN_AT_EPOCH": "2"}
        }
        return built

    monkeypatch.setattr(trainer_module, "build_trainer", build_trainer_with_injection)
    smoke_config.train.epochs = 2
    smoke_config.train.max_train_batches = SHORT_EPOCH_BATCHES
    smoke_config.train.storage_path = str(tmp_path / "storage")
    smoke_config.train.name = "nan-run"

    try:
        summary = trainer_module.run_training(smoke_config, quiet=True)
    except trainer_module.TrainingError as stopped:
        message = str(stopped)
    else:
        pytest.fail(
            f"run_training returned normally after a NaN loss in epoch 2: epochs_completed="
            f"{summary.epochs_completed} of {smoke_config.train.epochs}, checkpoint {summary.checkpoint_path}"
        )

    print(f"Ray Train run stopped: {message}")
    epoch, step = _error_location(message)
    assert epoch == 2 and step > 1
    checkpoints = _assert_no_corrupted_checkpoint(tmp_path / "storage")
    assert [path.name for path in checkpoints] == ["epoch_0001"]
