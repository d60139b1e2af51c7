"""Tracking: training writes TensorBoard event files whose scalars are the manifests' metrics, epoch by epoch;
a resumed run adds to the same folder; train.tensorboard=false writes none; MLflow is refused clearly when it
is not installed, and logs params and metrics when it is."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import ConfigError, PlatformConfig, with_overrides
from hrm_platform.training.local import train_local
from hrm_platform.training.tracking import TENSORBOARD_DIR, flat_config, open_trackers, require_mlflow

FAST = ["train.epochs=2", "train.max_train_batches=2"]


def _train(config: PlatformConfig, out_dir: Path, *overrides: str) -> Path:
    """The smoke preset, two short epochs (later overrides win), trained in this process into out_dir."""
    return train_local(with_overrides(config, [*FAST, *overrides], source="test"), out_dir)


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file in `logdir`: TFRecords (u64 length, masked crc32c of the
    length, an `Event` proto, masked crc32c of the proto), each checksum checked."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked_crc32c(header)
            record = data[offset + 12:offset + 12 + length]
            assert struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0] == masked_crc32c(record)
            offset += 16 + length
            event = Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def _history(checkpoint: Path) -> list[dict]:
    return load_manifest(checkpoint)["metrics"]["history"]


def test_train_local_writes_the_manifest_metrics_of_every_epoch(smoke_config, tmp_path):
    best = _train(smoke_config, tmp_path / "run")
    history = _history(max((tmp_path / "run").glob("epoch_*")))
    scalars = read_scalars(tmp_path / "run" / TENSORBOARD_DIR)

    assert [entry["epoch"] for entry in history] == [1, 2]
    for name in ("train_loss", "train_accuracy", "val_accuracy", "val_loss", "lr", "samples_per_s",
                 "train_mean_segments"):
        expected = {entry["epoch"]: entry[name] for entry in history}
        assert scalars[name] == pytest.approx(expected, rel=1e-6), name  # float32 in the event file
    segments = len(history[0]["train_accuracy_per_segment"])
    assert segments == smoke_config.model.max_segments
    assert scalars[f"train_accuracy_per_segment/segment_{segments}"][2] == pytest.approx(
        history[1]["train_accuracy_per_segment"][-1], rel=1e-6)
    assert best.parent == tmp_path / "run"


def test_a_resumed_run_adds_its_epochs_to_the_same_folder(smoke_config, tmp_path):
    _train(smoke_config, tmp_path / "run")
    _train(smoke_config, tmp_path / "run", "train.epochs=3")
    logdir = tmp_path / "run" / TENSORBOARD_DIR

    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # one per leg; the first one kept whole
    history = _history(max((tmp_path / "run").glob("epoch_*")))
    assert read_scalars(logdir)["train_loss"] == pytest.approx(
        {entry["epoch"]: entry["train_loss"] for entry in history}, rel=1e-6)
    assert sorted(read_scalars(logdir)["train_loss"]) == [1, 2, 3]


def test_tensorboard_off_writes_no_event_files(smoke_config, tmp_path):
    _train(smoke_config, tmp_path / "run", "train.tensorboard=false")
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["epoch_0001", "epoch_0002"]


def test_other_ranks_and_uri_storage_track_nothing(smoke_config, tmp_path, caplog):
    assert open_trackers(smoke_config, tmp_path, rank=1).members == []
    smoke_config.train.storage_path = "s3://bucket/runs"
    with caplog.at_level(logging.WARNING):
        trackers = open_trackers(smoke_config, None, rank=0)
    assert trackers.members == []
    assert "not a local folder: no TensorBoard event files" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_mlflow_without_mlflow_is_refused_before_training(smoke_config, tmp_path, monkeypatch):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mlflow is installed here")
    from hrm_platform.training import trainer

    def ray_must_not_start(*args, **kwargs):
        raise AssertionError("Ray was started before the MLflow refusal")

    monkeypatch.setattr(trainer, "_ray_session", ray_must_not_start)  # another test may have Ray running already
    smoke_config.train.mlflow_tracking_uri = f"file://{tmp_path / 'mlruns'}"
    with pytest.raises(ConfigError, match=r"train.mlflow_tracking_uri='file://.*pip install mlflow"):
        require_mlflow(smoke_config.train)
    with pytest.raises(ConfigError, match="pip install mlflow"):
        trainer.run_training(smoke_config, quiet=True)  # refused on the driver, before Ray starts
    with pytest.raises(ConfigError, match="pip install mlflow"):
        _train(smoke_config, tmp_path / "run", f"train.mlflow_tracking_uri=file://{tmp_path / 'mlruns'}")
    assert not list((tmp_path / "run").glob("epoch_*"))


def test_mlflow_gets_the_config_and_every_epoch(smoke_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a folder store without it
    uri = f"file://{tmp_path / 'mlruns'}"
    _train(smoke_config, tmp_path / "run", f"train.mlflow_tracking_uri={uri}")
    _train(smoke_config, tmp_path / "run", f"train.mlflow_tracking_uri={uri}", "train.epochs=3")  # resumed

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(smoke_config.train.name)
    (run,) = client.search_runs([experiment.experiment_id])
    history = _history(max((tmp_path / "run").glob("epoch_*")))
    logged = {point.step: point.value for point in client.get_metric_history(run.info.run_id, "train_loss")}
    assert logged == pytest.approx({entry["epoch"]: entry["train_loss"] for entry in history})
    assert run.data.params["train.lr"] == str(smoke_config.train.lr)
    assert run.data.params["model.d_model"] == "32"
    assert set(run.data.params) == set(flat_config(smoke_config))
