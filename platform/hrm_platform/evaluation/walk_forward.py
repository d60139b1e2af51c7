"""Walk-forward evaluation: K out-of-sample test folds, each with its own model trained on everything before it.

    hrm evaluate --walk-forward 4 --config jobs/configs/demo.yaml --out artifacts/walk_forward

Fold k (`data.fold=k`, `data.folds=K`, see `data/dataset.py`) tests on the k-th of K consecutive periods that
cover the last `data.oos_fraction` of the history, and trains and validates on the bars before it (an
expanding window, the embargo apart). Every fold is an independent Ray Train run (`<train.name>-fold<k>`, its
checkpoints kept under `<out>/runs/`, verifiable like any other); then a Ray task fits the trained baselines on
the fold's train split and backtests model and baselines on its test period.

Concurrency: folds start as the cluster has room for them. A fold holds `train.num_workers *
train.cpus_per_worker` CPUs while it trains (its evaluation task needs one of them), so
floor(cluster CPUs / that) folds run at once; on a 2-core machine with 2 workers they queue one by one. The
queue is kept here, not in Ray, because a Ray Train run that waits too long for its workers fails.

A fold whose run already finished (same settings, same `<out>/runs/`) is not trained again: its best checkpoint
is evaluated. The pooled result concatenates the K test periods into one out-of-sample record
(`walk_forward_report.py` writes it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrm_platform.config import RAY_DATA_CPUS, ConfigError, DataConfig, PlatformConfig, validate_config

if TYPE_CHECKING:
    from hrm_platform.evaluation.backtest import BacktestResult

Progress = Callable[[str], None]


@dataclass
class FoldRun:
    """One fold: where its model is, when it trained (epoch seconds), and its backtest."""

    fold: int
    config: PlatformConfig
    checkpoint: str
    validation_accuracy: float | None
    train_started: float
    train_finished: float
    trained: bool  # False when a finished run of this fold was reused
    result: BacktestResult


def fold_config(config: PlatformConfig, fold: int, folds: int, runs_dir: Path) -> PlatformConfig:
    """The config of fold `fold`: its data split, its own run name, runs under `runs_dir`."""
    raw = config.model_dump(mode="json")
    raw["data"].update(fold=fold, folds=folds)
    raw["train"].update(name=f"{config.train.name}-fold{fold}", storage_path=str(runs_dir))
    return validate_config(raw, source=f"walk-forward fold {fold}")


def check_folds(config: PlatformConfig, folds: int) -> None:
    """Check every fold's splits once, so that data too short for K folds fails before any training: the
    in-memory loader builds each fold's datasets; data.loader=ray_data checks the split ranges against each
    instrument's row count from the Parquet footers, without reading the bars."""
    for fold in range(folds):
        data = fold_config(config, fold, folds, Path(".")).data
        try:
            _check_fold_data(data)
        except ValueError as error:
            raise ConfigError(f"walk-forward with {folds} folds: {error}") from None


def _check_fold_data(data: DataConfig) -> None:
    from hrm_platform.data.dataset import build_datasets, instrument_ranges

    if data.loader == "memory":
        build_datasets(data)
        return
    from hrm_platform.data.parquet import instrument_row_counts, list_instrument_files

    for symbol, rows in instrument_row_counts(list_instrument_files(str(data.path))).items():
        instrument_ranges(symbol, rows, data)


def fold_parallelism(config: PlatformConfig, cluster_cpus: float) -> int:
    """How many folds fit on the cluster at once (at least one: a fold that cannot fit fails in Ray Train)."""
    per_fold = config.train.worker_range[1] * config.train.cpus_per_worker + _data_cpus(config)  # most workers
    return max(1, math.floor(cluster_cpus / per_fold + 1e-9))


def _data_cpus(config: PlatformConfig) -> int:
    """CPUs a fold's Ray Data tasks need beside its workers (data.loader=ray_data), else none."""
    return RAY_DATA_CPUS if config.data.loader == "ray_data" else 0


def run_walk_forward(
    config: PlatformConfig, folds: int, out_dir: Path, progress: Progress | None = None, verbose: bool = False
) -> list[FoldRun]:
    """Train and backtest every fold on the connected Ray cluster (or an embedded local one, which forwards
    its workers' logs only when `verbose`)."""
    import ray

    from hrm_platform.local_ray import init_local_ray

    say = progress or (lambda line: None)
    check_folds(config, folds)
    runs_dir = (Path(out_dir) / "runs").resolve()
    configs = [fold_config(config, fold, folds, runs_dir) for fold in range(folds)]
    started_here = not ray.is_initialized()
    if started_here:
        per_fold = math.ceil(config.train.worker_range[1] * config.train.cpus_per_worker) + _data_cpus(config)
        init_local_ray(num_cpus=max(os.cpu_count() or 1, per_fold), log_to_driver=verbose)  # one fold always fits
    try:
        parallel = fold_parallelism(config, ray.cluster_resources().get("CPU", 1.0))
        say(f"walk-forward: {folds} folds, {parallel} at a time")
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fold") as pool:
            runs = list(pool.map(lambda fold_cfg: _run_fold(fold_cfg, say), configs))
    finally:
        if started_here:
            ray.shutdown()
    return runs


def _run_fold(config: PlatformConfig, say: Progress) -> FoldRun:
    import ray

    fold = int(config.data.fold or 0)
    started = time.time()
    checkpoint, accuracy, trained = _train_fold(config, say)
    finished = time.time()
    say(f"fold {fold}: {'trained' if trained else 'reused'} {checkpoint}; fitting baselines and backtesting")
    evaluate = ray.remote(num_cpus=1)(evaluate_fold_checkpoint)
    result = ray.get(evaluate.remote(checkpoint, config.model_dump(mode="json")))
    say(f"fold {fold}: done")
    return FoldRun(fold, config, checkpoint, accuracy, started, finished, trained, result)


def _train_fold(config: PlatformConfig, say: Progress) -> tuple[str, float | None, bool]:
    """(best checkpoint, its validation accuracy, whether it was trained now) of one fold's Ray Train run."""
    from hrm_platform.training.local import best_checkpoint
    from hrm_platform.training.run_dir import latest_checkpoint_of_run, run_is_finished
    from hrm_platform.training.trainer import run_training

    train = config.train
    if run_is_finished(config):  # same settings, all epochs done: evaluate what is there
        best = best_checkpoint(Path(train.storage_path) / train.name)
        return str(best), _validation_accuracy(best), False
    resumed = latest_checkpoint_of_run(train.storage_path, train.name) is not None
    say(f"fold {config.data.fold}: {'resuming' if resumed else 'training'} {train.name}")
    summary = run_training(config, quiet=True)
    return summary.checkpoint_path, summary.metrics.get("val_accuracy"), True


def _validation_accuracy(checkpoint: Path) -> float | None:
    from hrm_platform.checkpoint import load_manifest

    value = load_manifest(checkpoint)["metrics"]["latest"].get("val_accuracy")
    return None if value is None else float(value)


def evaluate_fold_checkpoint(checkpoint: str, config_dict: dict[str, Any]) -> BacktestResult:
    """The body of a fold's Ray task: baselines fitted on the fold's train split, everything backtested."""
    import torch

    from hrm_platform.checkpoint import load_model
    from hrm_platform.evaluation.split_evaluation import evaluate_split

    config = validate_config(config_dict, source=f"fold config of {checkpoint}")
    torch.set_num_threads(config.baselines.threads)
    model, loaded = load_model(checkpoint)
    return evaluate_split(model, loaded, config)
