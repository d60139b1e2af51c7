"""Where a rank's batches come from: the in-memory datasets (`data.loader: memory`) or its shard of the Ray
Data streams (`data.loader: ray_data`). The epoch loop sees only this interface.

    data = InMemoryData(bundle, collective, config)          # or StreamedShards(market, collective, config)
    n_batches, batches = data.train_batches(epoch)          # every rank gets the same n_batches
    for windows, actions, quantities in batches: ...        # (B, W, F) float32, (B,) int64, (B,) float32

Both also carry what a checkpoint records about the data: `feature_spec` and `description()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor

from hrm_platform.config import PlatformConfig
from hrm_platform.data.dataset import DatasetBundle
from hrm_platform.data.features import FeatureSpec
from hrm_platform.data.ray_data import StreamedMarket
from hrm_platform.training.batches import batches_per_epoch, iterate_batches, make_sampler
from hrm_platform.training.collective import Collective

Batch = tuple[Tensor, Tensor, Tensor]  # windows (B, W, F) float32, actions (B,) int64, quantities (B,) float32


class DescribesData(Protocol):
    """What a checkpoint records about its data (a DatasetBundle, or either TrainingData below)."""

    feature_spec: FeatureSpec

    def description(self) -> dict[str, object]: ...


class TrainingData(DescribesData, Protocol):
    @property
    def n_features(self) -> int: ...

    def steps_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int) -> tuple[int, Iterator[Batch]]: ...

    def val_batches(self, batch_size: int) -> Iterator[Batch]: ...


class InMemoryData:
    """This rank's DistributedSampler shard of the in-memory train split, reshuffled every epoch."""

    def __init__(self, bundle: DatasetBundle, collective: Collective, config: PlatformConfig) -> None:
        self.bundle = bundle
        self.collective = collective
        self.train = config.train
        self.sampler = make_sampler(bundle.train, collective, config.train.seed)
        self.feature_spec = bundle.feature_spec

    @property
    def n_features(self) -> int:
        return self.bundle.train.n_features

    def description(self) -> dict[str, object]:
        return self.bundle.description()

    def steps_per_epoch(self) -> int:
        return batches_per_epoch(len(self.sampler), self.train.batch_size, self.train.max_train_batches)

    def train_batches(self, epoch: int) -> tuple[int, Iterator[Batch]]:
        self.sampler.set_epoch(epoch)
        positions = list(self.sampler)
        n_batches = batches_per_epoch(len(positions), self.train.batch_size, self.train.max_train_batches)
        return n_batches, iterate_batches(self.bundle.train, positions, self.train.batch_size, n_batches)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's strided share of the validation split."""
        dataset, rank, world = self.bundle.val, self.collective.rank, self.collective.world_size
        positions = list(range(rank, len(dataset), world))
        return iterate_batches(dataset, positions, batch_size, math.ceil(len(positions) / batch_size))


class StreamedShards:
    """This rank's shards of the Ray Data train and val streams (`ray.train.get_dataset_shard`).

    Ray Train splits each stream into equal shards (`equal=True`), so every rank has floor(N / world) train
    windows and the same number of full batches; the local shuffle buffer reseeds every epoch.
    """

    def __init__(self, market: StreamedMarket, train_shard: Any, val_shard: Any, collective: Collective,
                 config: PlatformConfig) -> None:
        self.market = market
        self.train_shard, self.val_shard = train_shard, val_shard
        self.collective = collective
        self.train, self.data = config.train, config.data
        self.feature_spec = market.feature_spec

    @property
    def n_features(self) -> int:
        return self.market.n_features

    def description(self) -> dict[str, object]:
        return self.market.description()

    def steps_per_epoch(self) -> int:
        shard_windows = self.market.split_size("train") // self.collective.world_size
        return batches_per_epoch(shard_windows, self.train.batch_size, self.train.max_train_batches)

    def train_batches(self, epoch: int) -> tuple[int, Iterator[Batch]]:
        n_batches = self.steps_per_epoch()
        batches = self.train_shard.iter_torch_batches(
            batch_size=self.train.batch_size,
            drop_last=True,
            local_shuffle_buffer_size=self.data.shuffle_buffer or None,
            local_shuffle_seed=None if not self.data.shuffle_buffer else self.train.seed * 100_003 + epoch,
            prefetch_batches=self.data.prefetch_batches,
        )
        return n_batches, _as_tuples(batches, n_batches)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        batches = self.val_shard.iter_torch_batches(batch_size=batch_size, prefetch_batches=self.data.prefetch_batches)
        return _as_tuples(batches, None)


def _as_tuples(batches: Iterator[dict[str, Tensor]], limit: int | None) -> Iterator[Batch]:
    """Ray Data's column dicts as (windows, actions, quantities); stops after `limit` batches without
    requesting another (each rank stops at the same count, so DDP's all-reduces line up)."""
    counter = range(limit) if limit is not None else iter(int, 1)  # iter(int, 1): endless
    for _, batch in zip(counter, batches):
        yield batch["window"], batch["action"], batch["quantity"]

