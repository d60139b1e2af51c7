"""Resuming from a checkpoint continues exactly; bad losses and mismatched configs stop with clear errors.

These run `train_local` (the Ray loop's epoch and step functions, in one process) on a few smoke batches.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from hrm_platform.checkpoint import CheckpointError, load_checkpoint, load_manifest
from hrm_platform.config import PlatformConfig
from hrm_platform.model.act import SegmentStepMetrics
from hrm_platform.training import epoch as epoch_module
from hrm_platform.training.epoch import NonFiniteLossError
from hrm_platform.training.local import train_local
from hrm_platform.training.state import lr_factor


@pytest.fixture
def short_config(smoke_config: PlatformConfig) -> PlatformConfig:
    smoke_config.train.epochs = 3
    smoke_config.train.max_train_batches = 4
    smoke_config.train.keep_checkpoints = 3
    return smoke_config


def _history(checkpoint: Path) -> list[dict]:
    return load_manifest(checkpoint)["metrics"]["history"]


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run_bit_for_bit(
    short_config: PlatformConfig, tmp_path: Path
) -> None:
    train_local(short_config, tmp_path)
    uninterrupted = _history(tmp_path / "epoch_0003")
    shutil.rmtree(tmp_path / "epoch_0003")  # as if the process died during epoch 3

    lines: list[str] = []
    train_local(short_config, tmp_path, progress=lines.append)

    resumed = _history(tmp_path / "epoch_0003")
    assert [entry["resumed_after_epoch"] for entry in resumed] == [0, 0, 2]
    assert resumed[:2] == uninterrupted[:2]
    # Model, optimizer, schedule, data order and RNG (ACT exploration) all continued exactly.
    assert resumed[2]["param_fingerprints"] == uninterrupted[2]["param_fingerprints"]
    assert resumed[2]["train_loss"] == uninterrupted[2]["train_loss"]
    assert resumed[2]["step"] == 3 * 4
    assert len(lines) == 1 and lines[0].startswith("epoch 3/3  loss ")


def test_a_finished_run_started_again_trains_nothing(short_config: PlatformConfig, tmp_path: Path) -> None:
    best = train_local(short_config, tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    assert train_local(short_config, tmp_path) == best
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_non_finite_loss_stops_naming_epoch_and_step_without_a_checkpoint(
    short_config: PlatformConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = epoch_module.deep_supervision_step
    calls = {"count": 0}

    def step_that_diverges_on_the_third_batch(*args, **kwargs) -> SegmentStepMetrics:
        metrics = real_step(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 3:
            metrics.loss[-1] = math.nan
        return metrics

    monkeypatch.setattr(epoch_module, "deep_supervision_step", step_that_diverges_on_the_third_batch)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite training loss at epoch 1, step 3 .*no checkpoint was written"
    ):
        train_local(short_config, tmp_path)
    assert list(tmp_path.glob("epoch_*")) == []


def test_resume_refuses_a_checkpoint_of_another_model(short_config: PlatformConfig, tmp_path: Path) -> None:
    short_config.train.epochs = 1
    train_local(short_config, tmp_path)
    short_config.train.epochs = 2
    short_config.model.d_model = 64
    with pytest.raises(CheckpointError, match=r"model config differs in \['d_model'\]"):
        train_local(short_config, tmp_path)


def test_checkpoint_holds_everything_a_continuation_needs(short_config: PlatformConfig, tmp_path: Path) -> None:
    short_config.train.epochs = 1
    loaded = load_checkpoint(train_local(short_config, tmp_path), with_training_state=True)
    state = loaded.training_state
    assert state["epoch"] == 1 and state["step"] == 4
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 4
    assert set(state["rng_by_rank"][0]) >= {"torch", "python", "numpy"}
    assert loaded.manifest["epoch"] == 1 and loaded.manifest["metrics"]["latest"]["epoch"] == 1


def test_learning_rate_warms_up_then_decays_by_cosine() -> None:
    factors = [lr_factor(step, warmup_steps=4, total_steps=20) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[20] == pytest.approx(0.1)
    assert all(later <= earlier for earlier, later in zip(factors[4:], factors[5:]))
