"""Builds the Ray Train `TorchTrainer` from the typed config, runs it, and summarises the result.

    hrm train --config jobs/configs/demo.yaml train.epochs=3          # embedded local cluster
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/demo.yaml

Resume: Ray Train (V2) keeps a snapshot of the reported checkpoints in `<storage_path>/<name>/`. A run
started again with the same `train.name` and `train.storage_path` finds it, and every worker gets the
latest checkpoint from `ray.train.get_checkpoint()`; the loop continues after that checkpoint's epoch. The
same mechanism restarts the worker group after a worker dies (up to `train.max_failures` times).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import RAY_DATA_CPUS, PlatformConfig, TrainConfig
from hrm_platform.data.ray_data import STREAMED_SPLITS, StreamedMarket, plan_streamed_market, window_dataset
from hrm_platform.local_ray import init_local_ray, quiet_ray_data
from hrm_platform.training.fit import SCORE_METRIC, checkpoint_score
from hrm_platform.training.loop import FAILURE_KEY, loop_config, train_loop_per_worker
from hrm_platform.training.progress import relayed_progress
from hrm_platform.training.run_dir import check_run_can_continue
from hrm_platform.training.tracking import require_mlflow


class TrainingError(RuntimeError):
    """Training stopped on purpose (e.g. a non-finite loss); the message says where and why."""


@dataclass
class TrainingSummary:
    checkpoint_path: str  # the best checkpoint by validation accuracy
    metrics: dict[str, Any]  # that checkpoint's epoch
    epochs_completed: int
    latest_checkpoint_path: str
    run_dir: str
    final_metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch, resumed runs included

    def to_dict(self, with_history: bool = False) -> dict[str, Any]:
        payload = asdict(self)
        if not with_history:
            payload.pop("history")
        return payload


def storage_path(train: TrainConfig) -> str:
    """A local folder made absolute (Ray needs that); a URI (s3://, gs://, ...) as given."""
    if "://" in train.storage_path:
        return train.storage_path
    return str(Path(train.storage_path).expanduser().resolve())


def build_trainer(config: PlatformConfig, *, progress_queue: Any | None = None) -> TorchTrainer:
    """DDP over `train.num_workers` workers: NCCL on GPUs, gloo on CPUs; keeps the best k checkpoints. Rank 0
    puts a progress line per epoch on `progress_queue` when one is given. A [min, max] range is Ray Train V2's
    elastic scaling: the worker group starts at what fits (>= min) and restarts at a new size from the latest
    checkpoint when the cluster's room changes (Ray looks every 60 s, and sees a joined node within 20 s)."""
    train = config.train
    market, datasets = _streamed_datasets(config)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(config, progress_queue, market),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)) if datasets else None,
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,  # an int, or a (min, max) tuple: elastic
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=train.name,
            storage_path=storage_path(train),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.keep_checkpoints,
                checkpoint_score_attribute=SCORE_METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=train.max_failures),
        ),
    )


def _streamed_datasets(config: PlatformConfig) -> tuple[StreamedMarket | None, dict[str, Any]]:
    """data.loader=ray_data: the market planned on the driver (files, statistics, splits) and its train and val
    window streams, which Ray Train splits into one equal shard per worker. The memory loader: none."""
    if config.data.loader != "ray_data":
        return None, {}
    market = plan_streamed_market(config.data)
    datasets = {split: window_dataset(market, split, shuffle_seed=config.train.seed if split == "train" else None)
                for split in STREAMED_SPLITS}
    return market, datasets


def run_training(config: PlatformConfig, quiet: bool = False, verbose: bool = False) -> TrainingSummary:
    """Train on the connected Ray cluster (a job's), or on an embedded local one started and stopped here.

    Rank 0's progress line per epoch is printed here unless `quiet`; the workers' own logs (and Ray's
    chatter with them) reach this process only when an embedded cluster is started `verbose`. A run of this
    name that is finished, or was trained with other settings, is refused before Ray starts
    (`training/run_dir.py`).
    """
    require_mlflow(config.train)  # train.mlflow_tracking_uri without mlflow installed: refused before Ray starts
    check_run_can_continue(config)
    if not quiet:
        _print_line(start_line(config))
    streamed = config.data.loader == "ray_data"
    data_cpus = RAY_DATA_CPUS if streamed else 0  # room for Ray Data's tasks beside the workers
    with _ray_session(config.train, log_to_driver=verbose, data_cpus=data_cpus), _progress_queue(quiet) as queue:
        if streamed and not verbose:
            quiet_ray_data()
        result = build_trainer(config, progress_queue=queue).fit()
    outcome = result.return_value if isinstance(result.return_value, dict) else {}
    if FAILURE_KEY in outcome:
        raise TrainingError(outcome[FAILURE_KEY])
    return summarize(result.best_checkpoints or [], result.checkpoint, str(result.path))


def start_line(config: PlatformConfig) -> str:
    """What is about to happen, printed before Ray's start-up (which takes a while and says nothing)."""
    train = config.train
    backend = "NCCL on GPUs" if train.use_gpu else "gloo on CPUs"
    return (f"training run {train.name!r}: {train.epochs} epochs, {_workers_text(train)} Ray Train workers (DDP, "
            f"{backend}), checkpoints under {storage_path(train)}/{train.name}; starting Ray ...")


def _workers_text(train: TrainConfig) -> str:
    low, high = train.worker_range
    return str(low) if low == high else f"{low}-{high} (elastic)"


@contextmanager
def _progress_queue(quiet: bool) -> Iterator[Any | None]:
    if quiet:
        yield None
        return
    with relayed_progress(_print_line) as queue:
        yield queue


def _print_line(line: str) -> None:
    print(line, flush=True)


@contextmanager
def _ray_session(train: TrainConfig, log_to_driver: bool, data_cpus: int = 0) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    # Never attach to another cluster on this machine; make room for the workers even on a small one.
    needed_cpus = math.ceil(train.worker_range[1] * train.cpus_per_worker) + data_cpus
    init_local_ray(num_cpus=max(os.cpu_count() or 1, needed_cpus), log_to_driver=log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()


def summarize(best_checkpoints: list[tuple[Any, dict[str, Any]]], latest: Any, run_dir: str) -> TrainingSummary:
    """The best checkpoint by validation accuracy (later epoch on a tie), with the run's per-epoch history."""
    if latest is None or not best_checkpoints:
        raise TrainingError(f"the run in {run_dir} reported no checkpoint")
    best, best_metrics = max(best_checkpoints, key=lambda pair: (checkpoint_score(pair[1]), pair[1].get("epoch", 0)))
    with latest.as_directory() as directory:
        manifest = load_manifest(directory)  # verifies the hashes of what landed in storage
    history = manifest["metrics"]["history"]
    return TrainingSummary(
        checkpoint_path=best.path,
        metrics=_plain(best_metrics),
        epochs_completed=int(manifest["epoch"]),
        latest_checkpoint_path=latest.path,
        run_dir=run_dir,
        final_metrics=history[-1] if history else {},
        history=history,
    )


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN (an epoch without validation) as None, so the summary is strict JSON."""
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in metrics.items()
    }


def print_summary(summary: TrainingSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, allow_nan=False))
        return
    metrics = summary.metrics
    print(
        f"trained {summary.epochs_completed} epochs; best checkpoint: epoch {metrics.get('epoch')}, "
        f"validation accuracy {_fmt(metrics.get(SCORE_METRIC))}, train loss {_fmt(metrics.get('train_loss'))}"
    )
    print(summary.checkpoint_path)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
