"""The epoch loop both training paths run: the Ray Train worker (`loop.py`, one process per DDP rank) and
`train_local` (one process, no Ray). They differ only in where an epoch's checkpoint goes.

    fit(run, data, config, collective, save_epoch=write_and_report, progress=print)   # data: data_source.py

Per epoch: train, validate when due, record the weight fingerprint of every rank (and of its weight
average with train.ema_decay), the resume point and the first step's time, append to the run's history,
gather every rank's RNG state, hand all of it to `save_epoch` (every rank calls it: a Ray worker reports on
every rank), pass the metrics to the tracker (TensorBoard, MLflow: rank 0's), and let rank 0 print the
progress line. A non-finite loss raises `NonFiniteLossError` on every rank together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from hrm_platform.config import PlatformConfig
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import TrainingData
from hrm_platform.training.epoch import train_epoch
from hrm_platform.training.progress import format_progress, format_slow_start
from hrm_platform.training.resume import capture_rng_state, parameter_fingerprint
from hrm_platform.training.state import TrainingRun
from hrm_platform.training.tracking import Tracker
from hrm_platform.training.validation import should_validate, validate

SaveEpoch = Callable[[dict[str, Any], list[dict[str, Any]]], None]  # (epoch metrics, RNG state of every rank)
ProgressFn = Callable[[str], None]  # receives one formatted line per epoch, e.g. `print`
SCORE_METRIC = "val_accuracy"  # what "best checkpoint" means, for Ray's CheckpointConfig and train_local


def fit(
    run: TrainingRun,
    data: TrainingData,
    config: PlatformConfig,
    collective: Collective,
    save_epoch: SaveEpoch,
    progress: ProgressFn | None = None,
    tracker: Tracker | None = None,
) -> int:
    """Train from `run.epoch` to `config.train.epochs`; returns the epochs completed. `tracker` gets each
    epoch's metrics once its checkpoint is saved (`training/tracking.py`: TensorBoard, MLflow; rank 0 only)."""
    resumed_after = run.epoch
    started = time.perf_counter()
    for _ in range(run.epoch, config.train.epochs):
        first_epoch = run.epoch == resumed_after and progress is not None and collective.rank == 0
        warn_if_slow = (lambda seconds, steps: _warn_if_slow(seconds, steps, config, progress)) if first_epoch else None
        metrics = train_epoch(run, data, config, collective, after_first_step=warn_if_slow)
        if should_validate(run.epoch, config):
            metrics.update(validate(run, data, config, collective))
        metrics["param_fingerprints"] = collective.gather_objects(parameter_fingerprint(run.model))
        if run.ema is not None:  # every rank averages its own copy: these must agree too
            metrics["ema_fingerprints"] = collective.gather_objects(parameter_fingerprint(run.ema.model))
        metrics["resumed_after_epoch"] = resumed_after
        metrics["first_step_unix"] = run.first_step_unix
        run.history.append(metrics)
        save_epoch(metrics, collective.gather_objects(capture_rng_state()))
        if tracker is not None:
            tracker.log_epoch(metrics)
        if progress is not None and collective.rank == 0:
            seconds_per_epoch = (time.perf_counter() - started) / (run.epoch - resumed_after)
            progress(format_progress(metrics, config.train.epochs, seconds_per_epoch))
    return run.epoch


def _warn_if_slow(seconds_per_step: float, steps: int, config: PlatformConfig, progress: ProgressFn) -> None:
    """A line after the first step when the first epoch looks minutes away (a serving-size model on a CPU)."""
    estimate = seconds_per_step * steps
    if estimate > config.train.slow_epoch_warning_s:
        progress(format_slow_start(seconds_per_step, steps))


def checkpoint_score(metrics: dict[str, Any]) -> float:
    """The validation accuracy an epoch's checkpoint is ranked by; -inf for an epoch without validation."""
    value = metrics.get(SCORE_METRIC)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf
