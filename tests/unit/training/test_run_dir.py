"""Starting a run again: a finished one is refused with what to change, and so is one trained with other
settings; a run that asks for more epochs passes. Through `hrm train` too, before Ray starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_platform.checkpoint import load_checkpoint
from hrm_platform.config import ConfigError
from hrm_platform.training.run_dir import check_run_can_continue

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def finished_run(trained_checkpoint, tmp_path, smoke_config):
    """A copy of the smoke run's checkpoint as <storage>/smoke/epoch_NNNN, and the config that trained it."""
    storage = tmp_path / "storage"
    shutil.copytree(trained_checkpoint, storage / "smoke" / trained_checkpoint.name)
    config = load_checkpoint(trained_checkpoint).config
    config.train.storage_path = str(storage)
    return config, load_checkpoint(trained_checkpoint).epoch


def test_a_finished_run_is_refused_naming_the_epochs(finished_run):
    config, epoch = finished_run
    config.train.epochs = epoch
    with pytest.raises(ConfigError, match=rf"already finished at epoch {epoch}/{epoch}.*raise train.epochs"):
        check_run_can_continue(config)


def test_more_epochs_continue_the_run(finished_run):
    config, epoch = finished_run
    config.train.epochs = epoch + 2
    check_run_can_continue(config)  # passes: Ray resumes from the checkpoint


def test_other_settings_are_refused_naming_them(finished_run):
    config, epoch = finished_run
    config.train.epochs = epoch + 2
    config.train.lr = config.train.lr * 2
    config.model.d_model = 64
    with pytest.raises(ConfigError, match=r"model.d_model=32, train.lr=.*Use a new train.name"):
        check_run_can_continue(config)


def test_hrm_train_refuses_before_starting_ray(finished_run):
    config, epoch = finished_run
    command = [sys.executable, "-m", "hrm_platform.cli", "train", "--config", "jobs/configs/smoke.yaml",
               f"train.storage_path={config.train.storage_path}", f"train.epochs={epoch}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert f"run 'smoke' already finished at epoch {epoch}/{epoch}" in result.stderr
    assert "Traceback" not in result.stderr and "Started a local Ray instance" not in result.stderr
