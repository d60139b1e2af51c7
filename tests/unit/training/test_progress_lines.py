"""Long phases say so: a slow first step warns how long the epoch will take; export prints its stages."""

from __future__ import annotations

from hrm_platform.config import load_config
from hrm_platform.training.local import train_local
from hrm_platform.training.progress import format_slow_start
from hrm_platform.training.trainer import start_line

SMOKE = "jobs/configs/smoke.yaml"


def test_a_slow_first_step_warns_before_the_epoch_ends(tmp_path) -> None:
    config = load_config(SMOKE, ["train.epochs=2", "train.max_train_batches=3", "train.slow_epoch_warning_s=1e-6"])
    lines: list[str] = []
    train_local(config, tmp_path, progress=lines.append)
    assert lines[0].startswith("warning: the first step took") and "an epoch of 3 steps" in lines[0]
    assert [line.split()[1] for line in lines[1:]] == ["1/2", "2/2"]  # then the epoch lines; warned only once


def test_a_fast_first_step_does_not_warn(tmp_path) -> None:
    config = load_config(SMOKE, ["train.epochs=1", "train.max_train_batches=2"])
    lines: list[str] = []
    train_local(config, tmp_path, progress=lines.append)
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1")


def test_the_warning_and_the_start_line_say_what_happens() -> None:
    assert "takes about 5 min" in format_slow_start(2.0, 150)
    line = start_line(load_config(SMOKE))
    assert line.startswith("training run 'smoke': 2 epochs, 2 Ray Train workers (DDP, gloo on CPUs)")
    assert line.endswith("starting Ray ...")
