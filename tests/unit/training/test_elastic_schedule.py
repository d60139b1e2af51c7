"""An elastic resize (another world size, so other steps per epoch) continues the learning-rate schedule from
the same share of training; a resume at the same size leaves it untouched (bit-exact resume)."""

from __future__ import annotations

import pytest
import torch

from hrm_platform.config import load_config
from hrm_platform.model.hrm import HRM
from hrm_platform.training.resume import realign_schedule
from hrm_platform.training.state import lr_factor, new_training_run

EPOCHS, WARMUP = 4, 2


def _run(steps_per_epoch: int):
    config = load_config(None, [f"train.epochs={EPOCHS}", f"train.warmup_steps={WARMUP}", "train.lr=0.01",
                                "model.d_model=8", "model.n_heads=2", "model.h_layers=1", "model.l_layers=1"])
    model = HRM(config.model, n_features=3, window=4)
    return new_training_run(model, config, torch.device("cpu"), steps_per_epoch), config


def _after_epochs(steps_per_epoch: int, epochs: int):
    """A run whose optimizer stepped `epochs` epochs at `steps_per_epoch`, then was saved at that boundary."""
    run, _ = _run(steps_per_epoch)
    for _ in range(epochs * steps_per_epoch):
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
    run.epoch = epochs
    return run


def test_a_resize_continues_the_schedule_from_the_same_share_of_training():
    saved = _after_epochs(steps_per_epoch=10, epochs=1)  # 1 worker: 10 steps per epoch
    resumed, config = _run(steps_per_epoch=5)  # 2 workers: 5
    resumed.scheduler.load_state_dict(saved.scheduler.state_dict())
    resumed.epoch, resumed.step = saved.epoch, saved.step
    realign_schedule(resumed, steps_per_epoch=5)
    assert resumed.step == 5
    expected = 0.01 * lr_factor(5, WARMUP, 5 * EPOCHS)  # a quarter of the way, as before the resize
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert expected == pytest.approx(0.01 * lr_factor(10, WARMUP, 10 * EPOCHS), rel=0.05)


def test_the_same_size_leaves_the_schedule_untouched():
    saved = _after_epochs(steps_per_epoch=10, epochs=2)
    lr, step = saved.optimizer.param_groups[0]["lr"], saved.step
    realign_schedule(saved, steps_per_epoch=10)
    assert (saved.step, saved.optimizer.param_groups[0]["lr"]) == (step, lr)
