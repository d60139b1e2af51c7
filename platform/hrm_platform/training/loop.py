"""The Ray Train worker function: deep-supervision training as PyTorch DDP, one process per rank.

`trainer.py` builds the TorchTrainer that runs `train_loop_per_worker` on every worker. Each worker builds
the same datasets (deterministic from data.seed) and trains its DistributedSampler shard, or (data.loader:
ray_data) streams its shard of the driver's Ray Data datasets, and agrees with the
other ranks through all-reduces. Only rank 0 writes a checkpoint; every rank calls `ray.train.report`
once per epoch. A restarted worker group (FailureConfig) or a run started again with the same name and
storage path gets the latest checkpoint from `ray.train.get_checkpoint()` and continues after its epoch.
The epochs themselves are `training/fit.py`'s loop, the one `train_local` runs too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from hrm_platform.checkpoint import load_checkpoint
from hrm_platform.config import PlatformConfig, validate_config
from hrm_platform.data.dataset import build_datasets
from hrm_platform.data.ray_data import STREAMED_SPLITS, StreamedMarket
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import InMemoryData, StreamedShards, TrainingData
from hrm_platform.training.epoch import NonFiniteLossError
from hrm_platform.training.fit import fit
from hrm_platform.training.resume import checkpoint_name, resume_from, seed_rank, write_checkpoint
from hrm_platform.training.state import TrainingRun, build_model, new_training_run
from hrm_platform.training.tracking import open_trackers

PROGRESS_QUEUE_KEY = "progress_queue"  # keys of train_loop_config that are not PlatformConfig sections
MARKET_KEY = "streamed_market"  # data.loader=ray_data: the driver's StreamedMarket (files, stats, splits)
FAILURE_KEY = "failure"  # in the loop's return value when training stopped on purpose (non-finite loss)


def loop_config(
    config: PlatformConfig, progress_queue: Any | None = None, market: StreamedMarket | None = None
) -> dict[str, Any]:
    """What the driver hands Ray as train_loop_config: the config's plain values, the Ray queue that rank
    0's progress lines go to (`progress.relayed_progress`) or None for a quiet run, and with
    data.loader=ray_data the market the driver planned (`data/ray_data.py`)."""
    return {**config.model_dump(mode="json"), PROGRESS_QUEUE_KEY: progress_queue, MARKET_KEY: market}


def _training_data(platform: PlatformConfig, collective: Collective, market: StreamedMarket | None) -> TrainingData:
    """This rank's data: its shards of the driver's Ray Data streams, or the whole market built in memory."""
    if market is None:
        return InMemoryData(build_datasets(platform.data), collective, platform)
    shards = (ray.train.get_dataset_shard(split) for split in STREAMED_SPLITS)
    return StreamedShards(market, *shards, collective, platform)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one rank; returns {"epochs_completed": n} or {"failure": message} (Ray keeps rank 0's)."""
    raw = dict(config)
    progress_queue = raw.pop(PROGRESS_QUEUE_KEY, None)
    market = raw.pop(MARKET_KEY, None)
    platform = validate_config(raw, source="train_loop_config")
    torch.set_num_threads(platform.train.torch_threads)  # Ray sets OMP_NUM_THREADS=1 in workers
    device = ray.train.torch.get_device()
    collective = Collective.from_process_group(device)
    data = _training_data(platform, collective, market)
    run = _prepare_run(platform, data, device, collective)

    def save_epoch(metrics: dict[str, Any], rng_by_rank: list[dict[str, Any]]) -> None:
        _report(run, platform, data, metrics, rng_by_rank, collective.rank)

    trackers = open_trackers(platform, _local_run_dir(), collective.rank)  # rank 0's TensorBoard, MLflow
    try:
        epochs = fit(run, data, platform, collective, save_epoch,
                     progress=None if progress_queue is None else progress_queue.put, tracker=trackers)
    except NonFiniteLossError as error:
        # Every rank stops here together. Returning (not raising) ends the run at once: a raised error
        # would make FailureConfig restart from the last checkpoint and diverge again.
        return {FAILURE_KEY: str(error), "epochs_completed": run.epoch}
    finally:
        trackers.close()
    return {"epochs_completed": epochs}


def _local_run_dir() -> Path | None:
    """The run's folder `<storage_path>/<name>` as Ray Train resolved it (absolute: a worker's cwd is Ray's
    session dir), where its checkpoints land; None when storage is a URI (s3://, gs://, ...)."""
    storage = ray.train.get_context().get_storage()  # a DeveloperAPI of Ray Train (2.60)
    if storage.storage_filesystem.type_name != "local":
        return None
    return Path(storage.experiment_fs_path)


def _prepare_run(
    platform: PlatformConfig, data: TrainingData, device: torch.device, collective: Collective
) -> TrainingRun:
    """Model (DDP when world_size > 1), optimizer, schedule; restored from Ray's latest checkpoint if any."""
    steps_per_epoch = data.steps_per_epoch()
    model = build_model(platform, data.n_features)
    model = ray.train.torch.prepare_model(model)  # to the worker's device; DDP-wrapped when world_size > 1
    run = new_training_run(model, platform, device, steps_per_epoch)
    seed_rank(platform.train.seed, collective.rank)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            loaded = load_checkpoint(directory, with_training_state=True)
            resume_from(loaded, run, platform, collective.rank, steps_per_epoch)
    return run


def _report(
    run: TrainingRun, platform: PlatformConfig, data: TrainingData, metrics: dict[str, Any],
    rng_by_rank: list[dict[str, Any]], rank: int,
) -> None:
    """Rank 0 writes the checkpoint and reports it; the other ranks report the same metrics without one."""
    reported = dict(metrics)
    # Ray ranks checkpoints by this; an epoch without validation ranks last (NaN), never first.
    reported.setdefault("val_accuracy", float("nan"))
    if rank != 0:
        ray.train.report(reported)
        return
    name = checkpoint_name(run.epoch)
    with tempfile.TemporaryDirectory(prefix="hrm-checkpoint-") as staging:
        directory = write_checkpoint(Path(staging) / name, run, platform, data, metrics, rng_by_rank)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name=name)
