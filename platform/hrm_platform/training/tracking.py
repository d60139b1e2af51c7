"""Experiment tracking: rank 0 sends each epoch's metrics to TensorBoard and, when configured, to MLflow.

    <run dir>/tensorboard/events.out.tfevents.*     one scalar per metric per epoch (train.tensorboard)
    tensorboard --logdir runs                       every run under the storage folder, side by side

    trackers = open_trackers(config, run_dir, rank)   # no-op on ranks other than 0
    trackers.log_epoch(metrics)                       # the epoch's final metrics, after its checkpoint
    trackers.close()

The run dir is where the run's checkpoints are (`<storage_path>/<name>` for a Ray Train run, `out_dir` for
`train_local`); a resumed run adds a new event file there, and TensorBoard joins them into one curve. MLflow
(`train.mlflow_tracking_uri`) is optional and not a dependency: `require_mlflow` refuses such a config on the
driver, before Ray starts, when `mlflow` is not installed. The manifests stay the record of every metric;
trackers only mirror them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hrm_platform.config import ConfigError, PlatformConfig, TrainConfig

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under the run dir
RUN_DIR_TAG = "hrm.run_dir"  # MLflow tag that finds a resumed run's MLflow run again
SCALAR_METRICS = (
    "train_loss", "train_accuracy", "train_mean_segments", "val_loss", "val_accuracy", "val_mean_segments",
    "lr", "samples_per_s", "achieved_tflops", "mfu",
)
PER_SEGMENT_METRICS = ("train_loss_per_segment", "train_accuracy_per_segment")  # lists, segment 1 first
_MLFLOW_PARAMS_PER_CALL = 100  # MLflow's log_batch takes at most 100 params per request


class Tracker(Protocol):
    def log_epoch(self, metrics: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Trackers:
    """Every tracker of this rank; none (a no-op) on ranks other than 0."""

    members: list[Tracker] = field(default_factory=list)

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        for tracker in self.members:
            tracker.log_epoch(metrics)

    def close(self) -> None:
        for tracker in self.members:
            tracker.close()


def require_mlflow(train: TrainConfig) -> None:
    """ConfigError when train.mlflow_tracking_uri is set but mlflow is not installed (call before Ray starts)."""
    if train.mlflow_tracking_uri is not None and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"train.mlflow_tracking_uri={train.mlflow_tracking_uri!r} needs MLflow, which is not installed: "
            f"`pip install mlflow`, or leave train.mlflow_tracking_uri unset"
        )


def open_trackers(config: PlatformConfig, run_dir: Path | None, rank: int) -> Trackers:
    """Rank 0's trackers for the run in `run_dir` (None: storage is a URI, so no TensorBoard files)."""
    if rank != 0:
        return Trackers()
    train = config.train
    require_mlflow(train)
    trackers = Trackers()
    if train.tensorboard and run_dir is None:
        logger.warning(
            "train.storage_path=%r is not a local folder: no TensorBoard event files for run %r "
            "(set train.tensorboard=false to silence this)", train.storage_path, train.name,
        )
    elif train.tensorboard:
        trackers.members.append(TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR))
    if train.mlflow_tracking_uri is not None:
        run_key = str(run_dir) if run_dir is not None else f"{train.storage_path.rstrip('/')}/{train.name}"
        trackers.members.append(MlflowTracker.open(config, run_key))
    return trackers


def epoch_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The epoch's finite numbers by tag: `train_loss`, ..., `train_accuracy_per_segment/segment_1`, ..."""
    scalars = {name: metrics.get(name) for name in SCALAR_METRICS}
    for name in PER_SEGMENT_METRICS:
        for segment, value in enumerate(metrics.get(name) or [], start=1):
            scalars[f"{name}/segment_{segment}"] = value
    return {tag: float(value) for tag, value in scalars.items() if _is_finite_number(value)}


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardTracker:
    """Scalars per epoch (step = epoch) in a new event file of `logdir`; flushed every epoch."""

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter  # comes with ray[train]; imported here: no cost for other commands

        # A unique suffix: tensorboardX names files by the second and truncates a file of the same name, which
        # a run resumed within that second would otherwise do to the first leg's events.
        self.writer = SummaryWriter(logdir=str(logdir), filename_suffix=f".{uuid.uuid4().hex[:8]}")

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        for tag, value in epoch_scalars(metrics).items():
            self.writer.add_scalar(tag, value, global_step=int(metrics["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per training run: params (the flattened config) when created, metrics every epoch.

    A resumed run finds its MLflow run again by the run-dir tag and appends to it.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, config: PlatformConfig, run_key: str) -> MlflowTracker:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=config.train.mlflow_tracking_uri)
        experiment = client.get_experiment_by_name(config.train.name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.train.name)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{_quoted(run_key)}'",
                                   max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return cls(client, found[0].info.run_id)
        run = client.create_run(experiment_id, tags={RUN_DIR_TAG: run_key}, run_name=config.train.name)
        tracker = cls(client, run.info.run_id)
        tracker._log_params(flat_config(config))
        return tracker

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start:start + _MLFLOW_PARAMS_PER_CALL])

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        now_ms, step = int(time.time() * 1000), int(metrics["epoch"])
        points = [Metric(tag, value, now_ms, step) for tag, value in epoch_scalars(metrics).items()]
        try:
            self.client.log_batch(self.run_id, metrics=points)
        except (MlflowException, OSError) as error:  # a server down after the client's retries must not end a run
            logger.warning("MLflow run %s: epoch %d not logged (%s)", self.run_id, step, error)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flat_config(config: PlatformConfig) -> dict[str, str]:
    """{"train.lr": "0.003", "model.d_model": "32", ...}: every setting as MLflow params (strings)."""
    return dict(_flatten(config.model_dump(mode="json"), prefix=""))


def _flatten(values: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)


def _quoted(text: str) -> str:
    """A value inside single quotes of an MLflow search filter."""
    return text.replace("\\", "\\\\").replace("'", "\\'")
