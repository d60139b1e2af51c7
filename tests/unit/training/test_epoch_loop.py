"""The epoch loop's contracts that a refactor could silently break: shards reshuffle every epoch, epoch
metrics are reduced over ranks, and validation runs only when it is due."""

from __future__ import annotations

import math

import pytest
import torch

from hrm_platform.checkpoint import load_manifest
from hrm_platform.data.dataset import build_datasets
from hrm_platform.training import data_source as data_source_module
from hrm_platform.training.collective import Collective
from hrm_platform.training.data_source import InMemoryData
from hrm_platform.training.epoch import train_epoch
from hrm_platform.training.local import latest_checkpoint, train_local
from hrm_platform.training.state import build_model, new_training_run


@pytest.fixture
def short_run(smoke_config):
    smoke_config.train.max_train_batches = 2
    bundle = build_datasets(smoke_config.data)
    run = new_training_run(build_model(smoke_config, bundle.train.n_features), smoke_config, torch.device("cpu"), 2)
    return smoke_config, bundle, run


def _positions_per_epoch(monkeypatch, config, bundle, run, collective, epochs: int) -> list[list[int]]:
    seen: list[list[int]] = []
    real = data_source_module.iterate_batches

    def recording(dataset, positions, batch_size, n_batches):
        seen.append(list(positions))
        return real(dataset, positions, batch_size, n_batches)

    monkeypatch.setattr(data_source_module, "iterate_batches", recording)
    data = InMemoryData(bundle, collective, config)
    for _ in range(epochs):
        train_epoch(run, data, config, collective)
    return seen


def test_the_shard_is_reshuffled_every_epoch(monkeypatch, short_run):
    """DistributedSampler.set_epoch: without it every epoch would see the same order."""
    config, bundle, run = short_run
    first, second = _positions_per_epoch(monkeypatch, config, bundle, run, Collective(), epochs=2)
    assert sorted(first) == sorted(second)  # the same shard ...
    assert first != second  # ... in another order


class TwoIdenticalRanks(Collective):
    """What an all-reduce over two ranks that did the same work returns: every sum doubled."""

    def sum(self, values):
        return values * 2

    def max(self, values):
        return values

    def all_true(self, flag):
        return flag


def test_epoch_metrics_are_reduced_over_ranks(short_run):
    config, bundle, run = short_run
    ranks = TwoIdenticalRanks(rank=0, world_size=2)
    metrics = train_epoch(run, InMemoryData(bundle, ranks, config), config, ranks)
    local_samples = config.train.max_train_batches * config.train.batch_size
    assert metrics["samples"] == 2 * local_samples  # summed over ranks
    assert metrics["world_size"] == 2
    assert 0.0 <= metrics["train_accuracy"] <= 1.0  # means divide the summed counts, not just the sums


def test_validation_runs_only_when_due(smoke_config, tmp_path):
    smoke_config.train.epochs = 7
    smoke_config.train.max_train_batches = 1
    smoke_config.train.validation_frequency = 3
    train_local(smoke_config, tmp_path)
    history = load_manifest(latest_checkpoint(tmp_path))["metrics"]["history"]  # the best may be an earlier epoch
    validated = [entry["epoch"] for entry in history if math.isfinite(entry.get("val_accuracy", math.nan))]
    assert validated == [3, 6, 7]  # every third epoch, and the last
